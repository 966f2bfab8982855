/*
 * The c-loops kernels (Examples/Plugins/kernels-c) registered with one thing wrong, chosen at
 * compile time, each of which the host must refuse naming the library:
 *   -DBAD_KERNELS=1  gemm is NULL
 *   -DBAD_KERNELS=2  struct_size is that of a table of 16 bytes
 *   -DBAD_KERNELS=3  the table says ABI version 999
 *   -DBAD_KERNELS=4  the name "cpu", which is built in
 * and two that load but behave otherwise than c-loops:
 *   -DBAD_KERNELS=5  "c-host": HYDRA_KERNELS_HOST_MEMORY, every memory function NULL (valid: the
 *                    kernels compute on host memory the host allocates)
 *   -DBAD_KERNELS=6  "c-refuses": create refuses every job (HYDRA_ERROR_INPUT)
 */
#define hydra_plugin_register c_loops_register
#include "../../Examples/Plugins/kernels-c/kernels.c"
#undef hydra_plugin_register

static const hydra_registrar *real;

#if BAD_KERNELS == 6
static int32_t refuse(void *context, int64_t threads, const char *label, void **instance, hydra_error *error) {
  (void)context;
  (void)instance;
  snprintf(error->message, sizeof error->message, "%s: %lld threads are not enough", label, (long long)threads);
  return HYDRA_ERROR_INPUT;
}
#endif

static int32_t add_bad_kernels(void *host, const hydra_kernels *kernels, hydra_error *error) {
  hydra_kernels k = *kernels;
#if BAD_KERNELS == 1
  k.gemm = NULL;
#elif BAD_KERNELS == 2
  k.struct_size = 16;
#elif BAD_KERNELS == 3
  k.abi_version = 999;
#elif BAD_KERNELS == 4
  k.name = "cpu";
#elif BAD_KERNELS == 5
  k.name = "c-host";
  k.flags = HYDRA_KERNELS_HOST_MEMORY;
  k.allocate = NULL;
  k.deallocate = NULL;
  k.copy_to_device = NULL;
  k.copy_to_host = NULL;
  k.copy_on_device = NULL;
  k.synchronize = NULL;
#elif BAD_KERNELS == 6
  k.name = "c-refuses";
  k.create = refuse;
#endif
  return real->add_kernels(host, &k, error);
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  real = registrar;
  hydra_registrar wrapped = *registrar;
  wrapped.add_kernels = add_bad_kernels;
  return c_loops_register(host, &wrapped, error);
}
