/*
 * Transports of a single rank that send to themselves: enough to drive the host's transport adapter
 * (and a whole job, as one device) without a network. context: 0 "loop", 1 "loop-bad-shape" (delivers
 * tensors whose shape overflows), 2 "fail-send".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

typedef struct queued {
  hydra_message message; /* pointers into `payload` */
  void *payload;
  struct queued *next;
} queued;

typedef struct loop {
  intptr_t mode;
  const hydra_transport_host *host;
  queued *head, *tail;
} loop;

static int32_t loop_create(void *context, const hydra_transport_host *host, hydra_transport_info *info,
                           void **instance, hydra_error *error) {
  loop *l = calloc(1, sizeof *l);
  if (l == NULL) {
    snprintf(error->message, sizeof error->message, "out of memory");
    return HYDRA_ERROR;
  }
  l->mode = (intptr_t)context;
  l->host = host;
  info->rank = 0;
  info->size = 1;
  snprintf(info->host_name, sizeof info->host_name, "loopback");
  info->bandwidth = 0;
  *instance = l;
  return HYDRA_OK;
}

/* Copies the message at once and hands its buffers back before returning. */
static int32_t loop_send(void *instance, int64_t destination, const hydra_message *m, uint64_t token,
                         hydra_error *error) {
  loop *l = instance;
  if (l->mode == 2) {
    snprintf(error->message, sizeof error->message, "deliberate send failure to rank %lld", (long long)destination);
    return HYDRA_ERROR;
  }
  size_t bytes = m->type == HYDRA_MESSAGE_CONTROL ? (size_t)m->byte_count : sizeof(float);
  if (m->type == HYDRA_MESSAGE_TENSOR)
    for (int64_t i = 0; i < m->dimensions; i++) bytes *= (size_t)m->shape[i];
  queued *q = calloc(1, sizeof *q);
  if (q == NULL || (q->payload = malloc(bytes + 1)) == NULL) {
    free(q);
    snprintf(error->message, sizeof error->message, "out of memory");
    return HYDRA_ERROR;
  }
  q->message = *m;
  if (m->type == HYDRA_MESSAGE_CONTROL) {
    memcpy(q->payload, m->bytes, bytes);
    q->message.bytes = q->payload;
  } else {
    memcpy(q->payload, m->data, bytes);
    q->message.data = q->payload;
    if (l->mode == 1) {
      q->message.dimensions = 2;
      q->message.shape[0] = INT64_C(1) << 40;
      q->message.shape[1] = INT64_C(1) << 40;
    }
  }
  if (l->tail) l->tail->next = q; else l->head = q;
  l->tail = q;
  l->host->send_done(l->host->host, token);
  return HYDRA_OK;
}

static int32_t loop_poll(void *instance, hydra_error *error) {
  loop *l = instance;
  while (l->head) {
    queued *q = l->head;
    l->head = q->next;
    if (!l->head) l->tail = NULL;
    int32_t code = l->host->deliver(l->host->host, 0, &q->message, error);
    free(q->payload);
    free(q);
    if (code != HYDRA_OK) return code;
  }
  return HYDRA_OK;
}

static int32_t loop_is_idle(void *instance) { return ((loop *)instance)->head == NULL; }

static int32_t loop_all_gather(void *instance, const uint8_t *bytes, int64_t count, hydra_error *error) {
  loop *l = instance;
  return l->host->gathered(l->host->host, 0, bytes, count, error);
}

static void loop_abort(void *instance, int32_t code) {
  (void)instance;
  exit(code);
}

static void loop_close(void *instance) {
  loop *l = instance;
  while (l->head) {
    queued *q = l->head;
    l->head = q->next;
    free(q->payload);
    free(q);
  }
  free(l);
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  (void)host;
  const char *names[] = {"loop", "loop-bad-shape", "fail-send"};
  for (intptr_t i = 0; i < 3; i++) {
    hydra_transport t = {.name = names[i], .context = (void *)i, .create = loop_create, .send = loop_send,
                         .poll = loop_poll, .is_idle = loop_is_idle, .all_gather = loop_all_gather,
                         .abort = loop_abort, .close = loop_close};
    int32_t code = registrar->add_transport(registrar->host, &t, error);
    if (code != HYDRA_OK) return code;
  }
  return HYDRA_OK;
}
