/*
 * A library built against ABI version 1 (before kernels): its registrar had no add_kernels, and
 * it registers a scheduler "v1-first" (the first ready task on the first free device). A host of
 * version 2 must still load it.
 */
#include "hydra_plugin.h"

uint32_t hydra_plugin_abi_version(void) { return 1; }

static int32_t schedule(void *instance, const hydra_scheduler_view *view, hydra_assignment *out, int64_t capacity,
                        int64_t *count, hydra_error *error) {
  (void)instance;
  (void)error;
  *count = 0;
  if (capacity > 0 && view->ready_count > 0 && view->free_count > 0) {
    out[0].ready_index = 0;
    out[0].device = view->free_devices[0];
    *count = 1;
  }
  return HYDRA_OK;
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  (void)host;
  hydra_scheduler s = {.name = "v1-first", .context = 0, .create = 0, .schedule = schedule, .destroy = 0};
  return registrar->add_scheduler(registrar->host, &s, error);
}
