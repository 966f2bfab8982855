/*
 * srtf: shortest remaining time first. For each free device in turn (ascending), the ready task
 * whose model has the least estimated time left runs there, among the tasks not yet assigned that
 * may run on that device; ties go to the lower model index. The opposite of the built-in lrtf:
 * it finishes short models early (good for early results), where lrtf minimises the makespan.
 *
 * Built with only hydra_plugin.h: see build.sh.
 */
#include <stdio.h>
#include <stdlib.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

static int may_run_on(const hydra_ready_task *t, int64_t device) {
  if (t->allowed_devices == NULL) return 1;
  for (int64_t i = 0; i < t->allowed_count; i++)
    if (t->allowed_devices[i] == device) return 1;
  return 0;
}

/* Stateless: the instance is unused, and nothing is allocated. Runs on the coordinator's thread. */
static int32_t srtf_schedule(
  void *instance, const hydra_scheduler_view *view, hydra_assignment *out, int64_t capacity, int64_t *count,
  hydra_error *error) {
  (void)instance;
  (void)error;
  /* Few tasks are ready at once (one per model): a small bitmap on the stack would do, but the
   * number of models is not bounded, so allocate. */
  unsigned char *taken = calloc((size_t)view->ready_count + 1, 1);
  if (taken == NULL) {
    snprintf(error->message, sizeof error->message, "out of memory for %lld ready tasks", (long long)view->ready_count);
    return HYDRA_ERROR;
  }
  int64_t n = 0;
  for (int64_t f = 0; f < view->free_count && n < capacity; f++) {
    int64_t device = view->free_devices[f], best = -1;
    for (int64_t i = 0; i < view->ready_count; i++) {
      const hydra_ready_task *t = &view->ready[i];
      if (taken[i] || !may_run_on(t, device)) continue;
      if (best < 0 || t->remaining_seconds < view->ready[best].remaining_seconds ||
          (t->remaining_seconds == view->ready[best].remaining_seconds && t->model < view->ready[best].model))
        best = i;
    }
    if (best < 0) continue;
    taken[best] = 1;
    out[n].ready_index = best;
    out[n].device = device;
    n++;
  }
  free(taken);
  *count = n;
  return HYDRA_OK;
}

/* srtf takes no options: any is the user's mistake. */
static int32_t srtf_create(
  void *context, const hydra_option *options, int64_t option_count, uint64_t seed, void **instance, hydra_error *error) {
  (void)context;
  (void)seed;
  if (option_count > 0) {
    snprintf(error->message, sizeof error->message, "scheduler \"srtf\" takes no options; found \"%s\"", options[0].key);
    return HYDRA_ERROR_INPUT;
  }
  *instance = NULL;
  return HYDRA_OK;
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  if (host->abi_version != HYDRA_PLUGIN_ABI_VERSION) {
    snprintf(error->message, sizeof error->message, "built for ABI %d, host speaks %u", HYDRA_PLUGIN_ABI_VERSION,
             host->abi_version);
    return HYDRA_ERROR;
  }
  hydra_scheduler s = {
    .name = "srtf", .context = NULL, .create = srtf_create, .schedule = srtf_schedule, .destroy = NULL};
  return registrar->add_scheduler(registrar->host, &s, error);
}
