// System calls that Swift cannot call directly (C variadic functions), wrapped with fixed
// arguments.
#define _GNU_SOURCE
#include <sys/mman.h>

// mremap(2) without a new address: moves or resizes a mapping, carrying its pages.
static inline void *hydra_mremap(void *address, size_t old_size, size_t new_size, int flags) {
  return mremap(address, old_size, new_size, flags);
}
