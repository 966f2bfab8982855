#include <stdio.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

/* Reports the host's answers as its error message, for a test to compare. */
static int32_t probe(void *context, const hydra_partition_request *r, int64_t *ends, int64_t *count,
                     hydra_error *error) {
  (void)context, (void)ends, (void)count;
  snprintf(error->message, sizeof error->message,
           "footprint(0,2)=%lld footprint(1,%lld)=%lld footprint(-1,2)=%lld seconds(0,%lld)=%.1f shard_budget=%lld "
           "blocks=%lld state_bytes[1]=%lld name[2]=%s options=%lld",
           (long long)r->footprint(r, 0, 2), (long long)r->block_count, (long long)r->footprint(r, 1, r->block_count),
           (long long)r->footprint(r, -1, 2), (long long)r->block_count, r->seconds(r, 0, r->block_count),
           (long long)r->shard_budget, (long long)r->block_count, (long long)r->blocks[1].state_bytes,
           r->blocks[2].name, (long long)r->option_count);
  return HYDRA_ERROR_INPUT;
}

/* Two shards that leave the last block out. */
static int32_t bad_ends(void *context, const hydra_partition_request *r, int64_t *ends, int64_t *count,
                        hydra_error *error) {
  (void)context, (void)error;
  ends[0] = 1;
  ends[1] = r->block_count - 1;
  *count = 2;
  return HYDRA_OK;
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  (void)host;
  hydra_partitioner p = {.name = "probe", .partition = probe};
  int32_t code = registrar->add_partitioner(registrar->host, &p, error);
  if (code != HYDRA_OK) return code;
  hydra_partitioner b = {.name = "bad-ends", .partition = bad_ends};
  return registrar->add_partitioner(registrar->host, &b, error);
}
