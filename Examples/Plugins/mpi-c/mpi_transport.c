/*
 * "mpi-c": a transport plugin over MPI, written in C against hydra_plugin.h alone: a model for a
 * transport over another network library (UCX, libfabric, sockets). Launched by mpirun like the
 * built-in "mpi" (`[cluster] backend = "mpi-c"`): each process is one rank.
 *
 * Wire format: every message is one MPI message of bytes on the plugin's own communicator, under one
 * tag (MPI keeps the order of messages with one source and tag): a header of int64 words (type, kind,
 * model, index, step, dimensions, shape[8]) and then the payload (control bytes or Float32 values).
 * Sends copy the message into a buffer of their own, so the host's buffers go back at once.
 * Limit: a message of at most INT_MAX bytes (MPI's counts are int).
 *
 * HYDRA_MPI_C_FAIL_SEND=N (fault injection for tests): this rank's N-th send fails.
 */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

enum { TAG = 7, HEADER_WORDS = 6 + HYDRA_MAX_DIMENSIONS };

typedef struct pending {
  MPI_Request request;
  void *buffer;
  struct pending *next;
} pending;

typedef struct transport {
  const hydra_transport_host *host;
  MPI_Comm comm;
  int rank, size, initialized_mpi;
  pending *sends;
  long long sent, fail_at;
} transport;

static int32_t mpi_failed(hydra_error *error, const char *what, int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  snprintf(error->message, sizeof error->message, "%s: %s", what, text);
  return HYDRA_ERROR;
}

/* Called on the job's thread, once per process. */
static int32_t create(void *context, const hydra_transport_host *host, hydra_transport_info *info, void **instance,
                      hydra_error *error) {
  (void)context;
  transport *t = calloc(1, sizeof *t);
  if (t == NULL) {
    snprintf(error->message, sizeof error->message, "out of memory");
    return HYDRA_ERROR;
  }
  int ready = 0, level = 0, code;
  MPI_Initialized(&ready);
  if (!ready) {
    /* abort may come from any thread, sends from the runtime's progress thread. */
    if ((code = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &level)) != MPI_SUCCESS) {
      free(t);
      return mpi_failed(error, "MPI_Init_thread", code);
    }
    t->initialized_mpi = 1;
  } else {
    MPI_Query_thread(&level);
  }
  if (level < MPI_THREAD_MULTIPLE) {
    snprintf(error->message, sizeof error->message, "this MPI does not offer MPI_THREAD_MULTIPLE");
    free(t);
    return HYDRA_ERROR;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if ((code = MPI_Comm_dup(MPI_COMM_WORLD, &t->comm)) != MPI_SUCCESS) {
    free(t);
    return mpi_failed(error, "MPI_Comm_dup", code);
  }
  MPI_Comm_set_errhandler(t->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(t->comm, &t->rank);
  MPI_Comm_size(t->comm, &t->size);
  t->host = host;
  const char *fail = getenv("HYDRA_MPI_C_FAIL_SEND");
  t->fail_at = fail ? atoll(fail) : 0;
  int length = 0;
  char name[MPI_MAX_PROCESSOR_NAME];
  MPI_Get_processor_name(name, &length);
  info->rank = t->rank;
  info->size = t->size;
  snprintf(info->host_name, sizeof info->host_name, "%s", name);
  info->bandwidth = 0; /* unknown: the host assumes a default */
  *instance = t;
  return HYDRA_OK;
}

/* Sends complete in the background; their buffers are freed here (progress thread). */
static int32_t reap(transport *t, hydra_error *error) {
  for (pending **p = &t->sends; *p;) {
    int done = 0, code = MPI_Test(&(*p)->request, &done, MPI_STATUS_IGNORE);
    if (code != MPI_SUCCESS) return mpi_failed(error, "MPI_Test", code);
    if (!done) {
      p = &(*p)->next;
      continue;
    }
    pending *finished = *p;
    *p = finished->next;
    free(finished->buffer);
    free(finished);
  }
  return HYDRA_OK;
}

static int32_t send(void *instance, int64_t destination, const hydra_message *m, uint64_t token, hydra_error *error) {
  transport *t = instance;
  t->sent++;
  if (t->fail_at > 0 && t->sent == t->fail_at) {
    snprintf(error->message, sizeof error->message, "deliberate failure of send %lld to rank %lld (HYDRA_MPI_C_FAIL_SEND)",
             t->sent, (long long)destination);
    return HYDRA_ERROR;
  }
  size_t payload = m->type == HYDRA_MESSAGE_CONTROL ? (size_t)m->byte_count : sizeof(float);
  if (m->type == HYDRA_MESSAGE_TENSOR)
    for (int64_t i = 0; i < m->dimensions; i++) payload *= (size_t)m->shape[i];
  size_t bytes = HEADER_WORDS * sizeof(int64_t) + payload;
  if (bytes > INT_MAX) {
    snprintf(error->message, sizeof error->message, "a message of %zu bytes is more than one MPI message holds", bytes);
    return HYDRA_ERROR;
  }
  pending *p = calloc(1, sizeof *p);
  if (p == NULL || (p->buffer = malloc(bytes)) == NULL) {
    free(p);
    snprintf(error->message, sizeof error->message, "out of memory for a message of %zu bytes", bytes);
    return HYDRA_ERROR;
  }
  int64_t *header = p->buffer;
  int64_t words[6] = {m->type, m->kind, m->model, m->index, m->step, m->dimensions};
  memcpy(header, words, sizeof words);
  memcpy(header + 6, m->shape, sizeof m->shape);
  memcpy(header + HEADER_WORDS, m->type == HYDRA_MESSAGE_CONTROL ? (const void *)m->bytes : (const void *)m->data,
         payload);
  /* The copy is ours: the host's buffers go back now. */
  t->host->send_done(t->host->host, token);
  int code = MPI_Isend(p->buffer, (int)bytes, MPI_BYTE, (int)destination, TAG, t->comm, &p->request);
  if (code != MPI_SUCCESS) {
    free(p->buffer);
    free(p);
    return mpi_failed(error, "MPI_Isend", code);
  }
  p->next = t->sends;
  t->sends = p;
  return HYDRA_OK;
}

static int32_t poll(void *instance, hydra_error *error) {
  transport *t = instance;
  int32_t result = reap(t, error);
  if (result != HYDRA_OK) return result;
  for (;;) {
    int flag = 0, count = 0;
    MPI_Status status;
    int code = MPI_Iprobe(MPI_ANY_SOURCE, TAG, t->comm, &flag, &status);
    if (code != MPI_SUCCESS) return mpi_failed(error, "MPI_Iprobe", code);
    if (!flag) return HYDRA_OK;
    MPI_Get_count(&status, MPI_BYTE, &count);
    if (count < (int)(HEADER_WORDS * sizeof(int64_t))) {
      snprintf(error->message, sizeof error->message, "a message of %d bytes from rank %d", count, status.MPI_SOURCE);
      return HYDRA_ERROR;
    }
    int64_t *buffer = malloc((size_t)count);
    if (buffer == NULL) {
      snprintf(error->message, sizeof error->message, "out of memory for a message of %d bytes", count);
      return HYDRA_ERROR;
    }
    code = MPI_Recv(buffer, count, MPI_BYTE, status.MPI_SOURCE, TAG, t->comm, MPI_STATUS_IGNORE);
    if (code != MPI_SUCCESS) {
      free(buffer);
      return mpi_failed(error, "MPI_Recv", code);
    }
    hydra_message m = {.type = (int32_t)buffer[0], .kind = (int32_t)buffer[1], .model = buffer[2],
                       .index = buffer[3], .step = buffer[4], .dimensions = buffer[5]};
    memcpy(m.shape, buffer + 6, sizeof m.shape);
    m.bytes = (const uint8_t *)(buffer + HEADER_WORDS);
    m.byte_count = count - (int64_t)(HEADER_WORDS * sizeof(int64_t));
    m.data = (const float *)(buffer + HEADER_WORDS);
    /* The host checks the shape against the payload it reads; a tensor's payload must hold it. */
    if (m.type == HYDRA_MESSAGE_TENSOR) {
      int64_t values = 1;
      for (int64_t i = 0; i < m.dimensions && i < HYDRA_MAX_DIMENSIONS; i++) values *= m.shape[i];
      if (m.dimensions > HYDRA_MAX_DIMENSIONS || values < 0 || values * (int64_t)sizeof(float) != m.byte_count) {
        free(buffer);
        snprintf(error->message, sizeof error->message, "a tensor message from rank %d does not hold its shape",
                 status.MPI_SOURCE);
        return HYDRA_ERROR;
      }
    }
    result = t->host->deliver(t->host->host, status.MPI_SOURCE, &m, error);
    free(buffer);
    if (result != HYDRA_OK) return result;
  }
}

static int32_t is_idle(void *instance) {
  transport *t = instance;
  hydra_error ignored;
  reap(t, &ignored);
  return t->sends == NULL;
}

/* A collective on the job's thread: sizes first, then the bytes. */
static int32_t all_gather(void *instance, const uint8_t *bytes, int64_t count, hydra_error *error) {
  transport *t = instance;
  if (count > INT_MAX / t->size) {
    snprintf(error->message, sizeof error->message, "all_gather of %lld bytes is too large", (long long)count);
    return HYDRA_ERROR;
  }
  int mine = (int)count, code;
  int *counts = calloc((size_t)t->size, sizeof(int)), *offsets = calloc((size_t)t->size, sizeof(int));
  if (counts == NULL || offsets == NULL) {
    free(counts);
    free(offsets);
    snprintf(error->message, sizeof error->message, "out of memory");
    return HYDRA_ERROR;
  }
  if ((code = MPI_Allgather(&mine, 1, MPI_INT, counts, 1, MPI_INT, t->comm)) != MPI_SUCCESS) {
    free(counts);
    free(offsets);
    return mpi_failed(error, "MPI_Allgather", code);
  }
  long long total = 0;
  for (int r = 0; r < t->size; r++) {
    offsets[r] = (int)total;
    total += counts[r];
  }
  uint8_t *all = malloc(total > 0 ? (size_t)total : 1);
  int32_t result = HYDRA_OK;
  if (all == NULL || total > INT_MAX) {
    snprintf(error->message, sizeof error->message, "all_gather of %lld bytes in all", total);
    result = HYDRA_ERROR;
  } else if ((code = MPI_Allgatherv(bytes, mine, MPI_BYTE, all, counts, offsets, MPI_BYTE, t->comm)) != MPI_SUCCESS) {
    result = mpi_failed(error, "MPI_Allgatherv", code);
  } else {
    for (int r = 0; r < t->size && result == HYDRA_OK; r++)
      result = t->host->gathered(t->host->host, r, all + offsets[r], counts[r], error);
  }
  free(all);
  free(counts);
  free(offsets);
  return result;
}

static void abort_job(void *instance, int32_t code) {
  transport *t = instance;
  MPI_Abort(t->comm, code);
}

static void close_transport(void *instance) {
  transport *t = instance;
  hydra_error ignored;
  while (t->sends && reap(t, &ignored) == HYDRA_OK) {}
  MPI_Comm_free(&t->comm);
  if (t->initialized_mpi) MPI_Finalize();
  free(t);
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  if (host->abi_version != HYDRA_PLUGIN_ABI_VERSION) {
    snprintf(error->message, sizeof error->message, "built for plugin ABI version %d", HYDRA_PLUGIN_ABI_VERSION);
    return HYDRA_ERROR;
  }
  hydra_transport t = {.name = "mpi-c", .create = create, .send = send, .poll = poll, .is_idle = is_idle,
                       .all_gather = all_gather, .abort = abort_job, .close = close_transport};
  return registrar->add_transport(registrar->host, &t, error);
}
