// The C target that carries hydra_plugin.h (include/) for the loader. Plugins do not link it: the
// header is all they need.
#include "hydra_plugin.h"

uint32_t hydra_host_abi_version(void) { return HYDRA_PLUGIN_ABI_VERSION; }
