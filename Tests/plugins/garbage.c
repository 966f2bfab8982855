#include <stdint.h>
#include <stdio.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

/* context: 0 a ready index past the end, 1 device 99, 2 an error. */
static int32_t garbage(void *instance, const hydra_scheduler_view *view, hydra_assignment *out, int64_t capacity,
                       int64_t *count, hydra_error *error) {
  (void)capacity;
  intptr_t mode = (intptr_t)instance;
  if (mode == 2) {
    snprintf(error->message, sizeof error->message, "deliberate failure with %lld task(s) ready",
             (long long)view->ready_count);
    return HYDRA_ERROR;
  }
  out[0].ready_index = mode == 0 ? view->ready_count + 5 : 0;
  out[0].device = mode == 1 ? 99 : view->free_devices[0];
  *count = 1;
  return HYDRA_OK;
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  (void)host;
  const char *names[] = {"garbage-task", "garbage-device", "failing"};
  for (intptr_t i = 0; i < 3; i++) {
    hydra_scheduler s = {.name = names[i], .context = (void *)i, .schedule = garbage};
    int32_t code = registrar->add_scheduler(registrar->host, &s, error);
    if (code != HYDRA_OK) return code;
  }
  return HYDRA_OK;
}
