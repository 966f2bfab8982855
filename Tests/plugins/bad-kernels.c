/*
 * The c-loops kernels (Examples/Plugins/kernels-c) registered with one thing wrong, chosen at
 * compile time, each of which the host must refuse naming the library:
 *   -DBAD_KERNELS=1  gemm is NULL
 *   -DBAD_KERNELS=2  struct_size is that of a table of 16 bytes
 *   -DBAD_KERNELS=3  the table says ABI version 999
 *   -DBAD_KERNELS=4  the name "cpu", which is built in
 */
#define hydra_plugin_register c_loops_register
#include "../../Examples/Plugins/kernels-c/kernels.c"
#undef hydra_plugin_register

static const hydra_registrar *real;

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
#endif
  return real->add_kernels(host, &k, error);
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  real = registrar;
  hydra_registrar wrapped = *registrar;
  wrapped.add_kernels = add_bad_kernels;
  return c_loops_register(host, &wrapped, error);
}
