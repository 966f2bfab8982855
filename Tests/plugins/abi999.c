#include "hydra_plugin.h"

uint32_t hydra_plugin_abi_version(void) { return 999; }
int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  (void)host;
  (void)registrar;
  (void)error;
  return HYDRA_OK;
}
