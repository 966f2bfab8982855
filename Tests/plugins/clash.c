#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

static int32_t nothing(void *instance, const hydra_scheduler_view *view, hydra_assignment *out, int64_t capacity,
                       int64_t *count, hydra_error *error) {
  (void)instance, (void)view, (void)out, (void)capacity, (void)error;
  *count = 0;
  return HYDRA_OK;
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  (void)host;
  hydra_scheduler s = {.name = "lrtf", .schedule = nothing};
  return registrar->add_scheduler(registrar->host, &s, error);
}
