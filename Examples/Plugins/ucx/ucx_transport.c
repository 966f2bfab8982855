/*
 * "ucx": a transport plugin over UCX (the UCP tag-matching API), written in C against hydra_plugin.h
 * alone. A second HPC backend beside the built-in "mpi": launched by mpirun the same way
 * (`[cluster] backend = "ucx"`), each process one rank, but every byte between ranks goes through a
 * UCP worker of its own (shared memory, TCP, or whatever UCX finds: UCX_TLS chooses).
 *
 * Rank and size come from the launcher's environment: OMPI_COMM_WORLD_RANK/SIZE (Open MPI's mpirun),
 * PMI_RANK/PMI_SIZE (MPICH's Hydra), SLURM_PROCID/SLURM_NTASKS (srun); none of them: one rank alone.
 * No MPI call is made.
 *
 * Bootstrapping. ABI version 1 offers a transport no all-gather of the host's before it exists, so
 * the ranks meet through a rendezvous file: rank 0 writes its worker's address to
 * `$HYDRA_UCX_RENDEZVOUS/hydra-ucx-<job>.addr` (default folder: $TMPDIR, else /tmp; several nodes need
 * a folder they all see), written beside and renamed into place, so that a reader never sees half of
 * it. <job> is HYDRA_UCX_JOB, else Open MPI's PMIX_NAMESPACE with the job's random
 * OMPI_MCA_orte_precondition_transports key, else SLURM_JOB_ID.SLURM_STEP_ID. Every other rank reads
 * the file, connects to rank 0 and sends it its own address with the job's name (HELLO); rank 0, once
 * it has heard from every rank, removes the file and sends each the table of all addresses (TABLE);
 * then every rank connects to every rank. A file left by a job that died while starting is harmless:
 * it fails the checks (magic, job, size, checksum) or names a worker that never answers, and a rank
 * that hears nothing within a few seconds reads the file again and tries the newer address.
 *
 * Wire format. A message is a header message of int64 words (type, kind, model, index, step,
 * dimensions, shape[8], payload bytes, sequence, inline) followed, in the same UCP message, by its
 * payload when that is a control message or a tensor of at most INLINE_BYTES (copied, so the host's
 * buffers go back at once); a larger tensor follows as a second message sent straight from the host's
 * buffer (zero copy: the token goes back when UCX is done with it; UCX uses its rendezvous protocol).
 * The 64-bit tag holds a channel (8 bits), the sender's per-destination sequence number (24 bits) and
 * the sender's rank (32 bits): a receiver probes headers of any source, checks that each source's
 * sequence numbers come in order, receives the payload by its exact tag, and delivers each source's
 * messages in the order they were sent. Everything the network hands over is checked before use:
 * lengths against the header, shapes against the payload, ranks against the size.
 *
 * all_gather (the runtime's agreement and failure checks): every rank sends its bytes to rank 0 on the
 * GATHER channel, rank 0 sends all of them back on the SPREAD channel, both tagged with the number of
 * the collective.
 *
 * abort: tells every other rank on the ABORT channel (best effort; their next poll ends them with the
 * same code), then ends this process; mpirun also ends a job when one of its processes exits non-zero.
 *
 * Threads: one lock serialises every use of the worker (send, poll, is_idle and all_gather from the
 * host's threads, abort from any), so the worker runs in UCS_THREAD_MODE_SERIALIZED.
 *
 * Environment: HYDRA_UCX_TIMEOUT (seconds a blocking step may wait: connecting, all_gather; default
 * 300), HYDRA_UCX_FAIL_SEND=N (fault injection for tests: this rank's N-th send fails), and UCX's own
 * UCX_* variables (UCX_TLS=sm,self,tcp; UCX_LOG_LEVEL=debug).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "hydra_plugin.h"

HYDRA_PLUGIN_ABI_VERSION_FUNCTION

enum {
  HEADER_WORDS = 6 + HYDRA_MAX_DIMENSIONS + 3,
  HEADER_BYTES = HEADER_WORDS * 8,
  /* Tensors up to this many bytes travel inside their header message (copied). */
  INLINE_BYTES = 8192,
};

/* Channels: the top 8 bits of a tag. */
enum { CH_HEADER = 1, CH_PAYLOAD, CH_GATHER, CH_SPREAD, CH_HELLO, CH_TABLE, CH_ABORT };
#define CHANNEL_MASK 0xff00000000000000ull
#define SEQUENCE_MASK 0x00ffffff00000000ull
#define SOURCE_MASK 0x00000000ffffffffull
#define FULL_MASK 0xffffffffffffffffull
#define SEQUENCE_MODULO (1ull << 24)

/* Largest control message or all_gather contribution (the host's own limit), and address. */
#define LARGEST_CONTROL (1ll << 30)
#define LARGEST_ADDRESS (1 << 16)
#define LARGEST_RANKS (1 << 20)
static const char MAGIC[8] = {'H', 'Y', 'D', 'R', 'A', 'U', 'C', 'X'};

static ucp_tag_t make_tag(int channel, uint64_t sequence, int64_t source) {
  return ((ucp_tag_t)channel << 56) | ((sequence % SEQUENCE_MODULO) << 32) | ((uint64_t)source & SOURCE_MASK);
}

/* A send in flight: its header buffer (ours) and the UCP requests of the header and the payload. */
typedef struct outgoing {
  uint8_t *header;
  void *requests[2];
  int64_t destination;
  uint64_t token;
  int released; /* the token went back to the host */
  struct outgoing *next;
} outgoing;

/* A message being received: header (with an inline payload), then perhaps a payload of its own. */
typedef struct incoming {
  uint8_t *header;
  size_t header_length;
  void *header_request;
  int parsed;
  hydra_message message;
  uint64_t sequence;
  void *payload;
  size_t payload_bytes;
  void *payload_request;
  int payload_posted;
  int complete;
  struct incoming *next;
} incoming;

typedef struct transport {
  const hydra_transport_host *host;
  pthread_mutex_t lock;
  ucp_context_h context;
  ucp_worker_h worker;
  ucp_address_t *address;
  size_t address_length;
  ucp_ep_h *endpoints;
  int64_t rank, size;
  uint64_t *sent_sequence, *received_sequence;
  incoming **queue_head, **queue_tail;
  outgoing *sends;
  uint64_t gathers;
  long long sent, fail_at;
  double timeout;
  char job[160];
  char rendezvous[512];
} transport;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void pause_briefly(long microseconds) {
  struct timespec ts = {.tv_sec = 0, .tv_nsec = microseconds * 1000};
  nanosleep(&ts, NULL);
}

static int32_t failed(hydra_error *error, const char *format, const char *what, long long value) {
  snprintf(error->message, sizeof error->message, format, what, value);
  return HYDRA_ERROR;
}

static int32_t ucx_failed(hydra_error *error, const char *what, ucs_status_t status) {
  snprintf(error->message, sizeof error->message, "%s: %s", what, ucs_status_string(status));
  return HYDRA_ERROR;
}

static int32_t out_of_memory(hydra_error *error, size_t bytes) {
  snprintf(error->message, sizeof error->message, "out of memory for %zu bytes", bytes);
  return HYDRA_ERROR;
}

static void progress(transport *t) {
  for (int i = 0; i < 64 && ucp_worker_progress(t->worker) != 0; i++) {}
}

/* A whole decimal integer in [low, high], or -1. */
static long long parse_integer(const char *text, long long low, long long high) {
  if (text == NULL || *text == '\0') return -1;
  char *end = NULL;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < low || value > high) return -1;
  return value;
}

static uint64_t fnv1a(uint64_t h, const void *bytes, size_t count) {
  const uint8_t *p = bytes;
  for (size_t i = 0; i < count; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* Waits for a request of ours (NULL: already complete), progressing the worker, for `seconds`. */
static int32_t wait_request(transport *t, void *request, double seconds, const char *what, hydra_error *error) {
  if (request == NULL) return HYDRA_OK;
  if (UCS_PTR_IS_ERR(request)) return ucx_failed(error, what, UCS_PTR_STATUS(request));
  double deadline = now() + seconds;
  ucs_status_t status;
  while ((status = ucp_request_check_status(request)) == UCS_INPROGRESS) {
    progress(t);
    if (now() > deadline) {
      ucp_request_cancel(t->worker, request);
      ucp_request_free(request);
      return failed(error, "%s: not done after %lld s", what, (long long)seconds);
    }
  }
  ucp_request_free(request);
  return status == UCS_OK ? HYDRA_OK : ucx_failed(error, what, status);
}

static int32_t send_blocking(transport *t, ucp_ep_h ep, const void *bytes, size_t count, ucp_tag_t tag,
                             const char *what, hydra_error *error) {
  ucp_request_param_t param = {.op_attr_mask = 0};
  return wait_request(t, ucp_tag_send_nbx(ep, bytes, count, tag, &param), t->timeout, what, error);
}

/*
 * Receives the message a probe found, by its exact tag (a sequence number or a collective's number
 * makes each tag unique among the messages in flight). The probe leaves the message in UCX's queue
 * (`remove` 0): taking out a message of several eager fragments before its last fragment has arrived
 * (probe with `remove` 1, then ucp_tag_msg_recv_nbx) hangs UCX 1.13 over shared memory. NULL: the
 * message is already here whole.
 */
static void *receive_probed(transport *t, ucp_tag_t tag, void *buffer, size_t length) {
  ucp_request_param_t param = {.op_attr_mask = 0};
  return ucp_tag_recv_nbx(t->worker, buffer, length, tag, FULL_MASK, &param);
}

/*
 * Receives one message whose tag matches (`tag`, `mask`) of at most `largest` bytes into a buffer of
 * its own (the caller frees it). No message within `seconds`: HYDRA_ERROR with *timed_out set.
 */
static int32_t receive_blocking(transport *t, ucp_tag_t tag, ucp_tag_t mask, size_t largest, double seconds,
                                uint8_t **bytes, size_t *length, ucp_tag_t *sender, int *timed_out,
                                const char *what, hydra_error *error) {
  double deadline = now() + seconds;
  ucp_tag_recv_info_t info;
  *timed_out = 0;
  while (ucp_tag_probe_nb(t->worker, tag, mask, 0, &info) == NULL) {
    progress(t);
    if (now() > deadline) {
      *timed_out = 1;
      return failed(error, "%s: nothing arrived within %lld s", what, (long long)seconds);
    }
  }
  if (info.length > largest)
    return failed(error, "%s: a message of %lld bytes, more than expected", what, (long long)info.length);
  *bytes = malloc(info.length > 0 ? info.length : 1);
  if (*bytes == NULL) return out_of_memory(error, info.length);
  int32_t result =
    wait_request(t, receive_probed(t, info.sender_tag, *bytes, info.length), t->timeout, what, error);
  if (result != HYDRA_OK) {
    free(*bytes);
    *bytes = NULL;
    return result;
  }
  *length = info.length;
  *sender = info.sender_tag;
  return HYDRA_OK;
}

static int32_t connect_to(transport *t, const void *address, ucp_ep_h *ep, const char *what, hydra_error *error) {
  ucp_ep_params_t params = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS, .address = address};
  ucs_status_t status = ucp_ep_create(t->worker, &params, ep);
  return status == UCS_OK ? HYDRA_OK : ucx_failed(error, what, status);
}

/* Closes `ep`, letting what was sent on it finish within a second or so, else dropping it. */
static void disconnect(transport *t, ucp_ep_h ep, int force) {
  if (ep == NULL) return;
  ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0};
  void *request = ucp_ep_close_nbx(ep, &param);
  if (request == NULL || UCS_PTR_IS_ERR(request)) return;
  double deadline = now() + 2;
  while (ucp_request_check_status(request) == UCS_INPROGRESS && now() < deadline) progress(t);
  ucp_request_free(request);
}

/* ---------------------------------------------------------------------------------------------
 * Bootstrapping: who we are, which job, and every rank's worker address.
 * ------------------------------------------------------------------------------------------- */

static int32_t launcher_rank(transport *t, hydra_error *error) {
  static const char *pairs[][2] = {
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, {"PMI_RANK", "PMI_SIZE"}, {"SLURM_PROCID", "SLURM_NTASKS"}};
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    const char *rank = getenv(pairs[i][0]), *size = getenv(pairs[i][1]);
    if (rank == NULL && size == NULL) continue;
    t->size = parse_integer(size, 1, LARGEST_RANKS);
    t->rank = t->size > 0 ? parse_integer(rank, 0, t->size - 1) : -1;
    if (t->size < 1 || t->rank < 0) {
      snprintf(error->message, sizeof error->message, "the launcher says rank %s=%s of %s=%s: not a rank of the job",
               pairs[i][0], rank ? rank : "(unset)", pairs[i][1], size ? size : "(unset)");
      return HYDRA_ERROR;
    }
    return HYDRA_OK;
  }
  t->rank = 0;
  t->size = 1;
  return HYDRA_OK;
}

/* The job's name, made of [A-Za-z0-9._-] only (it names a file). */
static int32_t job_name(transport *t, hydra_error *error) {
  char raw[512] = "";
  const char *given = getenv("HYDRA_UCX_JOB"), *pmix = getenv("PMIX_NAMESPACE"),
             *key = getenv("OMPI_MCA_orte_precondition_transports"), *slurm = getenv("SLURM_JOB_ID");
  if (given && *given)
    snprintf(raw, sizeof raw, "%s", given);
  else if (pmix && *pmix)
    snprintf(raw, sizeof raw, "%s-%s", pmix, key ? key : "");
  else if (slurm && *slurm)
    snprintf(raw, sizeof raw, "slurm-%s.%s", slurm, getenv("SLURM_STEP_ID") ? getenv("SLURM_STEP_ID") : "0");
  else if (t->size > 1) {
    snprintf(error->message, sizeof error->message,
             "cannot tell which job this rank belongs to (no PMIX_NAMESPACE or SLURM_JOB_ID): set HYDRA_UCX_JOB to "
             "one name for all ranks of the job");
    return HYDRA_ERROR;
  }
  size_t n = strlen(raw);
  if (n >= sizeof t->job - 20) {
    /* Too long for a file name: a prefix and the hash of the whole. */
    snprintf(t->job, sizeof t->job, "%.100s-%016llx", raw, (unsigned long long)fnv1a(0xcbf29ce484222325ull, raw, n));
  } else {
    snprintf(t->job, sizeof t->job, "%s", raw);
  }
  for (char *c = t->job; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '-'))
      *c = '_';
  const char *folder = getenv("HYDRA_UCX_RENDEZVOUS");
  if (folder == NULL || *folder == '\0') folder = getenv("TMPDIR");
  if (folder == NULL || *folder == '\0') folder = "/tmp";
  if ((size_t)snprintf(t->rendezvous, sizeof t->rendezvous, "%s/hydra-ucx-%s.addr", folder, t->job) >=
      sizeof t->rendezvous) {
    snprintf(error->message, sizeof error->message, "the rendezvous folder's path is too long: %s", folder);
    return HYDRA_ERROR;
  }
  return HYDRA_OK;
}

/* The rendezvous file: MAGIC, size, job length, address length, checksum, job, address. */
static uint64_t file_checksum(const char *job, uint64_t size, const void *address, uint64_t length) {
  uint64_t h = fnv1a(0xcbf29ce484222325ull, job, strlen(job));
  h = fnv1a(h, &size, sizeof size);
  return fnv1a(h, address, length);
}

static int32_t write_rendezvous(transport *t, hydra_error *error) {
  char temporary[600];
  snprintf(temporary, sizeof temporary, "%s.%ld.tmp", t->rendezvous, (long)getpid());
  uint64_t size = (uint64_t)t->size, job_length = strlen(t->job), length = t->address_length;
  uint64_t check = file_checksum(t->job, size, t->address, length);
  int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return failed(error, "cannot write the rendezvous file %.400s (errno %lld)", temporary, errno);
  int good = write(fd, MAGIC, 8) == 8 && write(fd, &size, 8) == 8 && write(fd, &job_length, 8) == 8 &&
             write(fd, &length, 8) == 8 && write(fd, &check, 8) == 8 &&
             write(fd, t->job, job_length) == (ssize_t)job_length &&
             write(fd, t->address, length) == (ssize_t)length;
  good = fsync(fd) == 0 && good;
  good = close(fd) == 0 && good;
  /* Atomic: a reader sees the old file, no file, or this one whole. */
  if (!good || rename(temporary, t->rendezvous) != 0) {
    unlink(temporary);
    return failed(error, "cannot write the rendezvous file %.400s (errno %lld)", t->rendezvous, errno);
  }
  return HYDRA_OK;
}

/* Rank 0's address from the rendezvous file, checked whole; NULL while there is none (yet). */
static void *read_rendezvous(transport *t, size_t *length) {
  FILE *f = fopen(t->rendezvous, "rb");
  if (f == NULL) return NULL;
  char magic[8];
  uint64_t size, job_length, address_length, check;
  void *address = NULL;
  char job[sizeof t->job];
  if (fread(magic, 8, 1, f) == 1 && memcmp(magic, MAGIC, 8) == 0 && fread(&size, 8, 1, f) == 1 &&
      fread(&job_length, 8, 1, f) == 1 && fread(&address_length, 8, 1, f) == 1 && fread(&check, 8, 1, f) == 1 &&
      size == (uint64_t)t->size && job_length == strlen(t->job) && address_length > 0 &&
      address_length <= LARGEST_ADDRESS && fread(job, 1, job_length, f) == job_length &&
      memcmp(job, t->job, job_length) == 0 && (address = malloc(address_length)) != NULL &&
      fread(address, 1, address_length, f) == address_length && fgetc(f) == EOF &&
      file_checksum(t->job, size, address, address_length) == check) {
    *length = address_length;
  } else {
    free(address);
    address = NULL;
  }
  fclose(f);
  return address;
}

/* HELLO and TABLE carry the job's name first: a message of another job is refused. */
static size_t put_job(transport *t, uint8_t *out) {
  uint64_t n = strlen(t->job);
  memcpy(out, &n, 8);
  memcpy(out + 8, t->job, n);
  return 8 + n;
}

static int same_job(transport *t, const uint8_t *bytes, size_t length, size_t *offset) {
  uint64_t n;
  if (length < 8) return 0;
  memcpy(&n, bytes, 8);
  if (n != strlen(t->job) || n > length - 8 || memcmp(bytes + 8, t->job, n) != 0) return 0;
  *offset = 8 + n;
  return 1;
}

/* Rank 0: hears every rank's address, then tells each the table of all of them. */
static int32_t bootstrap_root(transport *t, hydra_error *error) {
  int32_t result = write_rendezvous(t, error);
  if (result != HYDRA_OK) return result;
  void **addresses = calloc((size_t)t->size, sizeof(void *));
  size_t *lengths = calloc((size_t)t->size, sizeof(size_t));
  if (addresses == NULL || lengths == NULL) {
    free(addresses);
    free(lengths);
    unlink(t->rendezvous);
    return out_of_memory(error, (size_t)t->size * 16);
  }
  int64_t heard = 1;
  double deadline = now() + t->timeout;
  while (heard < t->size && result == HYDRA_OK) {
    uint8_t *bytes = NULL;
    size_t length = 0, offset = 0;
    ucp_tag_t sender;
    int timed_out;
    double left = deadline - now();
    result = receive_blocking(t, make_tag(CH_HELLO, 0, 0), CHANNEL_MASK, LARGEST_ADDRESS + 1024, left > 0 ? left : 0,
                              &bytes, &length, &sender, &timed_out, "waiting for the ranks to join", error);
    if (result != HYDRA_OK) {
      if (timed_out)
        snprintf(error->message, sizeof error->message,
                 "%lld of %lld ranks joined within %.0f s (rendezvous file %.400s; HYDRA_UCX_TIMEOUT)", (long long)heard,
                 (long long)t->size, t->timeout, t->rendezvous);
      break;
    }
    int64_t from = (int64_t)(sender & SOURCE_MASK);
    uint64_t address_length;
    /* Another job's rank (an old file) or a garbled message: ignored. */
    if (from >= 1 && from < t->size && same_job(t, bytes, length, &offset) && length - offset >= 8 &&
        (memcpy(&address_length, bytes + offset, 8), address_length > 0 && address_length == length - offset - 8)) {
      if (addresses[from] == NULL) heard++;
      free(addresses[from]);
      addresses[from] = malloc(address_length);
      if (addresses[from] == NULL) result = out_of_memory(error, address_length);
      else {
        memcpy(addresses[from], bytes + offset + 8, address_length);
        lengths[from] = address_length;
      }
    }
    free(bytes);
  }
  /* Everyone has read it (or the job is over): nothing to leave behind. */
  unlink(t->rendezvous);
  /* The table: job, then for each rank its address length and address (rank 0's own first). */
  size_t total = 8 + strlen(t->job) + 8 + t->address_length;
  for (int64_t r = 1; r < t->size && result == HYDRA_OK; r++) total += 8 + lengths[r];
  uint8_t *table = result == HYDRA_OK ? malloc(total) : NULL;
  if (result == HYDRA_OK && table == NULL) result = out_of_memory(error, total);
  if (result == HYDRA_OK) {
    size_t at = put_job(t, table);
    for (int64_t r = 0; r < t->size; r++) {
      uint64_t n = r == 0 ? t->address_length : lengths[r];
      memcpy(table + at, &n, 8);
      memcpy(table + at + 8, r == 0 ? (const void *)t->address : addresses[r], n);
      at += 8 + n;
    }
    result = connect_to(t, t->address, &t->endpoints[0], "connecting to this rank", error);
    for (int64_t r = 1; r < t->size && result == HYDRA_OK; r++) {
      char what[64];
      snprintf(what, sizeof what, "connecting to rank %lld", (long long)r);
      result = connect_to(t, addresses[r], &t->endpoints[r], what, error);
      if (result == HYDRA_OK)
        result = send_blocking(t, t->endpoints[r], table, total, make_tag(CH_TABLE, 0, 0), "sending the table", error);
    }
  }
  free(table);
  for (int64_t r = 0; r < t->size; r++) free(addresses[r]);
  free(addresses);
  free(lengths);
  return result;
}

/* Every other rank: finds rank 0 through the file, joins, and connects to every rank of the table. */
static int32_t bootstrap_member(transport *t, hydra_error *error) {
  double deadline = now() + t->timeout;
  void *root = NULL, *hello_request = NULL;
  size_t root_length = 0;
  ucp_ep_h to_root = NULL;
  uint8_t *hello = malloc(16 + strlen(t->job) + t->address_length), *table = NULL;
  size_t table_length = 0;
  if (hello == NULL) return out_of_memory(error, t->address_length);
  size_t hello_length = put_job(t, hello);
  uint64_t n = t->address_length;
  memcpy(hello + hello_length, &n, 8);
  memcpy(hello + hello_length + 8, t->address, n);
  hello_length += 8 + n;
  int32_t result = HYDRA_OK;
  while (table == NULL) {
    if (now() > deadline) {
      result = HYDRA_ERROR;
      snprintf(error->message, sizeof error->message,
               "rank 0 did not answer within %.0f s (rendezvous file %.400s; is rank 0 running, and does this rank see "
               "that folder? HYDRA_UCX_RENDEZVOUS, HYDRA_UCX_TIMEOUT)",
               t->timeout, t->rendezvous);
      break;
    }
    size_t length = 0;
    void *address = read_rendezvous(t, &length);
    if (address == NULL) {
      pause_briefly(20000);
      continue;
    }
    if (root != NULL && length == root_length && memcmp(address, root, length) == 0) {
      free(address); /* the address we tried: wait for its answer a while longer */
    } else {
      /* A first or a newer address: the earlier one (an old file's) is dropped. */
      if (hello_request != NULL && !UCS_PTR_IS_ERR(hello_request)) {
        ucp_request_cancel(t->worker, hello_request);
        ucp_request_free(hello_request);
      }
      hello_request = NULL;
      disconnect(t, to_root, 1);
      to_root = NULL;
      free(root);
      root = address;
      root_length = length;
      hydra_error ignored;
      if (connect_to(t, root, &to_root, "connecting to rank 0", &ignored) != HYDRA_OK) {
        to_root = NULL;
        pause_briefly(100000);
        continue;
      }
      ucp_request_param_t param = {.op_attr_mask = 0};
      hello_request = ucp_tag_send_nbx(to_root, hello, hello_length, make_tag(CH_HELLO, 0, t->rank), &param);
    }
    int timed_out = 0;
    ucp_tag_t sender;
    hydra_error why;
    memset(&why, 0, sizeof why);
    int32_t got = receive_blocking(t, make_tag(CH_TABLE, 0, 0), FULL_MASK, (size_t)LARGEST_RANKS * 1024, 3, &table,
                                   &table_length, &sender, &timed_out, "waiting for rank 0's table", &why);
    if (got != HYDRA_OK && !timed_out) {
      result = got;
      *error = why;
      break;
    }
  }
  /* The HELLO is surely delivered: rank 0 answered it. */
  if (hello_request != NULL && !UCS_PTR_IS_ERR(hello_request)) {
    hydra_error ignored;
    wait_request(t, hello_request, 5, "hello", &ignored);
  }
  free(hello);
  free(root);
  size_t at = 0;
  if (result == HYDRA_OK && !same_job(t, table, table_length, &at))
    result = failed(error, "%.400s: rank 0's table is of another job (%lld bytes)", t->rendezvous, (long long)table_length);
  for (int64_t r = 0; r < t->size && result == HYDRA_OK; r++) {
    uint64_t length;
    if (table_length - at < 8 || (memcpy(&length, table + at, 8), length == 0 || length > table_length - at - 8)) {
      result = failed(error, "%.400s: rank 0's table is cut short at rank %lld", t->rendezvous, (long long)r);
      break;
    }
    char what[64];
    snprintf(what, sizeof what, "connecting to rank %lld", (long long)r);
    if (r == 0) {
      t->endpoints[0] = to_root;
      to_root = NULL;
    } else {
      result = connect_to(t, table + at + 8, &t->endpoints[r], what, error);
    }
    at += 8 + length;
  }
  if (result == HYDRA_OK && at != table_length)
    result = failed(error, "%.400s: rank 0's table has %lld bytes too many", t->rendezvous, (long long)(table_length - at));
  disconnect(t, to_root, 1);
  free(table);
  return result;
}

static void destroy(transport *t) {
  if (t->worker != NULL) {
    /* What was sent goes out before the endpoints close. */
    ucp_request_param_t param = {.op_attr_mask = 0};
    void *flush = ucp_worker_flush_nbx(t->worker, &param);
    hydra_error ignored;
    wait_request(t, flush, 5, "flush", &ignored);
    for (int64_t r = 0; t->endpoints != NULL && r < t->size; r++) disconnect(t, t->endpoints[r], 0);
    if (t->address != NULL) ucp_worker_release_address(t->worker, t->address);
    ucp_worker_destroy(t->worker);
  }
  if (t->context != NULL) ucp_cleanup(t->context);
  for (int64_t r = 0; t->queue_head != NULL && r < t->size; r++) {
    for (incoming *i = t->queue_head[r], *next; i != NULL; i = next) {
      next = i->next;
      free(i->header);
      free(i->payload);
      free(i);
    }
  }
  for (outgoing *o = t->sends, *next; o != NULL; o = next) {
    next = o->next;
    free(o->header);
    free(o);
  }
  free(t->endpoints);
  free(t->sent_sequence);
  free(t->received_sequence);
  free(t->queue_head);
  free(t->queue_tail);
  pthread_mutex_destroy(&t->lock);
  free(t);
}

/* Called on the job's thread, once per process. */
static int32_t create(void *context, const hydra_transport_host *host, hydra_transport_info *info, void **instance,
                      hydra_error *error) {
  (void)context;
  transport *t = calloc(1, sizeof *t);
  if (t == NULL) return out_of_memory(error, sizeof *t);
  pthread_mutex_init(&t->lock, NULL);
  t->host = host;
  const char *fail = getenv("HYDRA_UCX_FAIL_SEND"), *timeout = getenv("HYDRA_UCX_TIMEOUT");
  t->fail_at = fail ? parse_integer(fail, 0, LLONG_MAX) : 0;
  t->timeout = timeout ? (double)parse_integer(timeout, 1, 86400) : 300;
  if (t->timeout < 1) t->timeout = 300;
  int32_t result = launcher_rank(t, error);
  if (result == HYDRA_OK) result = job_name(t, error);
  size_t n = result == HYDRA_OK ? (size_t)t->size : 0;
  t->endpoints = calloc(n + 1, sizeof(ucp_ep_h));
  t->sent_sequence = calloc(n + 1, sizeof(uint64_t));
  t->received_sequence = calloc(n + 1, sizeof(uint64_t));
  t->queue_head = calloc(n + 1, sizeof(incoming *));
  t->queue_tail = calloc(n + 1, sizeof(incoming *));
  if (result == HYDRA_OK && (!t->endpoints || !t->sent_sequence || !t->received_sequence || !t->queue_head ||
                             !t->queue_tail))
    result = out_of_memory(error, n * 40);
  if (result == HYDRA_OK) {
    ucp_config_t *config = NULL;
    ucs_status_t status = ucp_config_read(NULL, NULL, &config);
    if (status != UCS_OK) result = ucx_failed(error, "ucp_config_read", status);
    else {
      ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS |
                                           UCP_PARAM_FIELD_NAME,
                             .features = UCP_FEATURE_TAG,
                             .estimated_num_eps = (size_t)t->size,
                             .name = "hydra-ucx"};
      status = ucp_init(&params, config, &t->context);
      ucp_config_release(config);
      if (status != UCS_OK) {
        t->context = NULL;
        result = ucx_failed(error, "ucp_init", status);
      }
    }
  }
  if (result == HYDRA_OK) {
    ucp_worker_params_t params = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                                  .thread_mode = UCS_THREAD_MODE_SERIALIZED};
    ucs_status_t status = ucp_worker_create(t->context, &params, &t->worker);
    if (status != UCS_OK) {
      t->worker = NULL;
      result = ucx_failed(error, "ucp_worker_create", status);
    } else if ((status = ucp_worker_get_address(t->worker, &t->address, &t->address_length)) != UCS_OK) {
      t->address = NULL;
      result = ucx_failed(error, "ucp_worker_get_address", status);
    } else if (t->address_length == 0 || t->address_length > LARGEST_ADDRESS) {
      result = failed(error, "%s: a worker address of %lld bytes", "ucp_worker_get_address",
                      (long long)t->address_length);
    }
  }
  if (result == HYDRA_OK) {
    if (t->size == 1) result = connect_to(t, t->address, &t->endpoints[0], "connecting to this rank", error);
    else if (t->rank == 0) result = bootstrap_root(t, error);
    else result = bootstrap_member(t, error);
  }
  if (result != HYDRA_OK) {
    destroy(t);
    return result;
  }
  info->rank = t->rank;
  info->size = t->size;
  if (gethostname(info->host_name, sizeof info->host_name) != 0) info->host_name[0] = '\0';
  info->host_name[sizeof info->host_name - 1] = '\0';
  info->bandwidth = 0; /* unknown: the host assumes a default */
  *instance = t;
  return HYDRA_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Messages.
 * ------------------------------------------------------------------------------------------- */

/* Bytes of a tensor of this shape, or -1 when the shape is not one. */
static int64_t tensor_bytes(int64_t dimensions, const int64_t *shape) {
  if (dimensions < 0 || dimensions > HYDRA_MAX_DIMENSIONS) return -1;
  int64_t bytes = (int64_t)sizeof(float);
  for (int64_t i = 0; i < dimensions; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] != 0 && bytes > INT64_MAX / shape[i]) return -1;
    bytes *= shape[i];
  }
  return bytes;
}

/*
 * Sends that UCX has finished with are freed; with `release`, their tokens go back to the host
 * (only from inside send or poll). A send that failed is reported.
 */
static int32_t reap(transport *t, int release, hydra_error *error) {
  int32_t result = HYDRA_OK;
  for (outgoing **p = &t->sends; *p;) {
    outgoing *o = *p;
    for (int i = 0; i < 2; i++) {
      if (o->requests[i] == NULL) continue;
      ucs_status_t status = ucp_request_check_status(o->requests[i]);
      if (status == UCS_INPROGRESS) continue;
      ucp_request_free(o->requests[i]);
      o->requests[i] = NULL;
      if (status != UCS_OK && result == HYDRA_OK) {
        snprintf(error->message, sizeof error->message, "a send to rank %lld failed: %s", (long long)o->destination,
                 ucs_status_string(status));
        result = HYDRA_ERROR;
      }
    }
    if (o->requests[0] != NULL || o->requests[1] != NULL || (!o->released && !release)) {
      p = &o->next;
      continue;
    }
    if (!o->released) t->host->send_done(t->host->host, o->token);
    *p = o->next;
    free(o->header);
    free(o);
  }
  return result;
}

static int32_t transport_send(void *instance, int64_t destination, const hydra_message *m, uint64_t token, hydra_error *error) {
  transport *t = instance;
  pthread_mutex_lock(&t->lock);
  int32_t result = HYDRA_OK;
  t->sent++;
  int64_t payload = -1;
  if (t->fail_at > 0 && t->sent == t->fail_at) {
    snprintf(error->message, sizeof error->message, "deliberate failure of send %lld to rank %lld (HYDRA_UCX_FAIL_SEND)",
             t->sent, (long long)destination);
    result = HYDRA_ERROR;
  } else if (destination < 0 || destination >= t->size) {
    result = failed(error, "%s to rank %lld, outside the job", "send", (long long)destination);
  } else if (m->type == HYDRA_MESSAGE_CONTROL) {
    payload = m->byte_count >= 0 && m->byte_count <= LARGEST_CONTROL && (m->byte_count == 0 || m->bytes) ? m->byte_count : -1;
    if (payload < 0) result = failed(error, "%s of %lld bytes", "a control message", (long long)m->byte_count);
  } else if (m->type == HYDRA_MESSAGE_TENSOR) {
    payload = tensor_bytes(m->dimensions, m->shape);
    if (payload < 0 || (payload > 0 && m->data == NULL))
      result = failed(error, "%s of %lld dimensions whose shape is not one", "a tensor", (long long)m->dimensions);
  } else {
    result = failed(error, "%s of type %lld", "a message", (long long)m->type);
  }
  if (result != HYDRA_OK) {
    pthread_mutex_unlock(&t->lock);
    return result;
  }
  int inlined = m->type == HYDRA_MESSAGE_CONTROL || payload <= INLINE_BYTES;
  size_t length = HEADER_BYTES + (inlined ? (size_t)payload : 0);
  outgoing *o = calloc(1, sizeof *o);
  uint8_t *header = malloc(length);
  if (o == NULL || header == NULL) {
    free(o);
    free(header);
    pthread_mutex_unlock(&t->lock);
    return out_of_memory(error, length);
  }
  uint64_t sequence = t->sent_sequence[destination]++ % SEQUENCE_MODULO;
  int64_t words[HEADER_WORDS] = {m->type, m->kind, m->model, m->index, m->step, m->dimensions};
  memcpy(words + 6, m->shape, sizeof m->shape);
  words[6 + HYDRA_MAX_DIMENSIONS] = payload;
  words[7 + HYDRA_MAX_DIMENSIONS] = (int64_t)sequence;
  words[8 + HYDRA_MAX_DIMENSIONS] = inlined;
  memcpy(header, words, sizeof words);
  if (inlined && payload > 0)
    memcpy(header + HEADER_BYTES, m->type == HYDRA_MESSAGE_CONTROL ? (const void *)m->bytes : (const void *)m->data,
           (size_t)payload);
  o->header = header;
  o->destination = destination;
  o->token = token;
  ucp_request_param_t param = {.op_attr_mask = 0};
  void *request = ucp_tag_send_nbx(t->endpoints[destination], header, length,
                                   make_tag(CH_HEADER, sequence, t->rank), &param);
  if (UCS_PTR_IS_ERR(request)) {
    free(header);
    free(o);
    snprintf(error->message, sizeof error->message, "ucp_tag_send_nbx to rank %lld: %s", (long long)destination,
             ucs_status_string(UCS_PTR_STATUS(request)));
    pthread_mutex_unlock(&t->lock);
    return HYDRA_ERROR;
  }
  o->requests[0] = request;
  o->next = t->sends;
  t->sends = o;
  if (inlined) {
    /* The copy is ours: the host's buffers go back now. */
    o->released = 1;
    t->host->send_done(t->host->host, token);
  } else {
    /* Zero copy from the host's buffer, which stays the host's until the send completes. */
    request = ucp_tag_send_nbx(t->endpoints[destination], m->data, (size_t)payload,
                               make_tag(CH_PAYLOAD, sequence, t->rank), &param);
    if (UCS_PTR_IS_ERR(request)) {
      snprintf(error->message, sizeof error->message, "ucp_tag_send_nbx of %lld bytes to rank %lld: %s",
               (long long)payload, (long long)destination, ucs_status_string(UCS_PTR_STATUS(request)));
      pthread_mutex_unlock(&t->lock);
      return HYDRA_ERROR;
    }
    o->requests[1] = request;
  }
  result = reap(t, 1, error);
  pthread_mutex_unlock(&t->lock);
  return result;
}

/* Checks a header that arrived whole and, for a tensor sent apart, starts receiving its payload. */
static int32_t parse(int64_t source, incoming *in, hydra_error *error) {
  int64_t w[HEADER_WORDS];
  if (in->header_length < HEADER_BYTES)
    return failed(error, "%s: a message of %lld bytes, shorter than a header", "receive", (long long)in->header_length);
  memcpy(w, in->header, sizeof w);
  int64_t payload = w[6 + HYDRA_MAX_DIMENSIONS], inlined = w[8 + HYDRA_MAX_DIMENSIONS];
  uint64_t sequence = (uint64_t)w[7 + HYDRA_MAX_DIMENSIONS];
  size_t extra = in->header_length - HEADER_BYTES;
  hydra_message *m = &in->message;
  *m = (hydra_message){.type = (int32_t)w[0], .kind = (int32_t)w[1], .model = w[2], .index = w[3], .step = w[4],
                       .dimensions = w[5]};
  memcpy(m->shape, w + 6, sizeof m->shape);
  int good = sequence == in->sequence && (inlined == 0 || inlined == 1) && payload >= 0 && w[0] == m->type &&
             w[1] == m->kind;
  if (good && m->type == HYDRA_MESSAGE_CONTROL) {
    good = inlined && (size_t)payload == extra && payload <= LARGEST_CONTROL;
    m->bytes = in->header + HEADER_BYTES;
    m->byte_count = payload;
  } else if (good && m->type == HYDRA_MESSAGE_TENSOR) {
    good = tensor_bytes(m->dimensions, m->shape) == payload &&
           (inlined ? (size_t)payload == extra && payload <= INLINE_BYTES : extra == 0 && payload > INLINE_BYTES);
    m->data = (const float *)(in->header + HEADER_BYTES);
  } else {
    good = 0;
  }
  if (!good)
    return failed(error, "%s from rank %lld is malformed (type, shape, sequence or length)", "a message",
                  (long long)source);
  in->parsed = 1;
  if (inlined) {
    in->complete = 1;
    return HYDRA_OK;
  }
  in->payload_bytes = (size_t)payload;
  return HYDRA_OK;
}

/*
 * The payload of a tensor sent apart, by its exact tag: probed first, so that its length is checked
 * before a byte of it is received.
 */
static int32_t receive_payload(transport *t, int64_t source, incoming *in, hydra_error *error) {
  ucp_tag_recv_info_t info;
  ucp_tag_t tag = make_tag(CH_PAYLOAD, in->sequence, source);
  if (ucp_tag_probe_nb(t->worker, tag, FULL_MASK, 0, &info) == NULL) return HYDRA_OK;
  if (info.length != in->payload_bytes)
    return failed(error, "%s: a tensor's payload of %lld bytes does not hold its shape", "receive",
                  (long long)info.length);
  in->payload = malloc(in->payload_bytes);
  if (in->payload == NULL) return out_of_memory(error, in->payload_bytes);
  in->message.data = in->payload;
  void *request = receive_probed(t, tag, in->payload, in->payload_bytes);
  if (UCS_PTR_IS_ERR(request)) return ucx_failed(error, "ucp_tag_recv_nbx", UCS_PTR_STATUS(request));
  in->payload_request = request;
  in->payload_posted = 1;
  if (request == NULL) in->complete = 1;
  return HYDRA_OK;
}

/* Moves one message on; sets `complete` when it is whole and checked. */
static int32_t advance(transport *t, int64_t source, incoming *in, hydra_error *error) {
  if (in->header_request != NULL) {
    ucs_status_t status = ucp_request_check_status(in->header_request);
    if (status == UCS_INPROGRESS) return HYDRA_OK;
    ucp_request_free(in->header_request);
    in->header_request = NULL;
    if (status != UCS_OK) return ucx_failed(error, "receiving a message", status);
  }
  if (!in->parsed) {
    int32_t result = parse(source, in, error);
    if (result != HYDRA_OK || in->complete) return result;
  }
  if (!in->payload_posted) return receive_payload(t, source, in, error);
  if (in->payload_request != NULL) {
    ucs_status_t status = ucp_request_check_status(in->payload_request);
    if (status == UCS_INPROGRESS) return HYDRA_OK;
    ucp_request_free(in->payload_request);
    in->payload_request = NULL;
    if (status != UCS_OK) return ucx_failed(error, "receiving a tensor", status);
    in->complete = 1;
  }
  return HYDRA_OK;
}

static int32_t poll_locked(transport *t, hydra_error *error) {
  int32_t result = reap(t, 1, error);
  if (result != HYDRA_OK) return result;
  progress(t);
  ucp_tag_recv_info_t info;
  if (ucp_tag_probe_nb(t->worker, make_tag(CH_ABORT, 0, 0), CHANNEL_MASK, 0, &info) != NULL) {
    int code = (int)((info.sender_tag & SEQUENCE_MASK) >> 32);
    fprintf(stderr, "hydra-mpi: rank %lld: ucx: rank %lld ended the job (exit %d)\n", (long long)t->rank,
            (long long)(info.sender_tag & SOURCE_MASK), code);
    fflush(NULL);
    _exit(code > 0 && code < 256 ? code : 1);
  }
  /* New messages, each at the end of its source's queue. */
  while (ucp_tag_probe_nb(t->worker, make_tag(CH_HEADER, 0, 0), CHANNEL_MASK, 0, &info) != NULL) {
    int64_t source = (int64_t)(info.sender_tag & SOURCE_MASK);
    uint64_t sequence = (info.sender_tag & SEQUENCE_MASK) >> 32;
    incoming *in = calloc(1, sizeof *in);
    size_t length = info.length;
    uint8_t *header = length <= HEADER_BYTES + (size_t)LARGEST_CONTROL ? malloc(length > 0 ? length : 1) : NULL;
    if (in == NULL || header == NULL) {
      free(in);
      free(header);
      return failed(error, "%s: a message of %lld bytes cannot be received", "receive", (long long)length);
    }
    void *request = receive_probed(t, info.sender_tag, header, length);
    if (UCS_PTR_IS_ERR(request)) {
      free(in);
      free(header);
      return ucx_failed(error, "ucp_tag_recv_nbx", UCS_PTR_STATUS(request));
    }
    in->header = header;
    in->header_length = length;
    in->header_request = request;
    if (source < 0 || source >= t->size || sequence != t->received_sequence[source] % SEQUENCE_MODULO) {
      /* Kept on the queue of rank 0 so that it is freed with the rest. */
      in->next = t->queue_head[0];
      t->queue_head[0] = in;
      if (t->queue_tail[0] == NULL) t->queue_tail[0] = in;
      return failed(error, "%s: a message tagged rank %lld, sequence %lld, out of place", "receive", (long long)source);
    }
    in->sequence = sequence;
    t->received_sequence[source]++;
    if (t->queue_tail[source] != NULL) t->queue_tail[source]->next = in;
    else t->queue_head[source] = in;
    t->queue_tail[source] = in;
  }
  /* Each source's messages move on together; whole ones are delivered in the order sent. */
  for (int64_t source = 0; source < t->size; source++) {
    for (incoming *in = t->queue_head[source]; in != NULL; in = in->next)
      if (!in->complete && (result = advance(t, source, in, error)) != HYDRA_OK) return result;
    while (t->queue_head[source] != NULL && t->queue_head[source]->complete) {
      incoming *in = t->queue_head[source];
      t->queue_head[source] = in->next;
      if (in->next == NULL) t->queue_tail[source] = NULL;
      result = t->host->deliver(t->host->host, source, &in->message, error);
      free(in->header);
      free(in->payload);
      free(in);
      if (result != HYDRA_OK) return result;
    }
  }
  return HYDRA_OK;
}

static int32_t transport_poll(void *instance, hydra_error *error) {
  transport *t = instance;
  pthread_mutex_lock(&t->lock);
  int32_t result = poll_locked(t, error);
  pthread_mutex_unlock(&t->lock);
  return result;
}

static int32_t is_idle(void *instance) {
  transport *t = instance;
  pthread_mutex_lock(&t->lock);
  hydra_error ignored;
  reap(t, 0, &ignored);
  int idle = t->sends == NULL;
  for (int64_t r = 0; r < t->size && idle; r++) idle = t->queue_head[r] == NULL;
  pthread_mutex_unlock(&t->lock);
  return idle;
}

/* A collective on the job's thread: every rank's bytes to rank 0, then all of them to every rank. */
static int32_t all_gather_locked(transport *t, const uint8_t *bytes, int64_t count, hydra_error *error) {
  if (count < 0 || count > LARGEST_CONTROL || (count > 0 && bytes == NULL))
    return failed(error, "%s of %lld bytes", "all_gather", (long long)count);
  uint64_t sequence = t->gathers++;
  uint8_t *all = NULL;
  size_t length = 0;
  int32_t result = HYDRA_OK;
  int timed_out;
  ucp_tag_t sender;
  if (t->rank != 0) {
    result = send_blocking(t, t->endpoints[0], bytes, (size_t)count, make_tag(CH_GATHER, sequence, t->rank),
                           "all_gather: sending to rank 0", error);
    if (result == HYDRA_OK)
      result = receive_blocking(t, make_tag(CH_SPREAD, sequence, 0), FULL_MASK,
                                (size_t)t->size * (8 + (size_t)LARGEST_CONTROL),
                                t->timeout, &all, &length, &sender, &timed_out, "all_gather: rank 0's answer", error);
  } else {
    /* All contributions, each prefixed by its length. */
    uint8_t **parts = calloc((size_t)t->size, sizeof(uint8_t *));
    size_t *lengths = calloc((size_t)t->size, sizeof(size_t));
    if (parts == NULL || lengths == NULL) result = out_of_memory(error, (size_t)t->size * 16);
    size_t total = 8 * (size_t)t->size + (size_t)count;
    for (int64_t r = 1; r < t->size && result == HYDRA_OK; r++) {
      result = receive_blocking(t, make_tag(CH_GATHER, sequence, r), FULL_MASK, (size_t)LARGEST_CONTROL, t->timeout,
                                &parts[r], &lengths[r], &sender, &timed_out, "all_gather: waiting for a rank", error);
      total += lengths[r];
    }
    if (result == HYDRA_OK && (all = malloc(total)) == NULL) result = out_of_memory(error, total);
    if (result == HYDRA_OK) {
      size_t at = 0;
      for (int64_t r = 0; r < t->size; r++) {
        uint64_t n = r == 0 ? (uint64_t)count : lengths[r];
        memcpy(all + at, &n, 8);
        if (n > 0) memcpy(all + at + 8, r == 0 ? bytes : parts[r], n);
        at += 8 + n;
      }
      length = total;
      for (int64_t r = 1; r < t->size && result == HYDRA_OK; r++)
        result = send_blocking(t, t->endpoints[r], all, length, make_tag(CH_SPREAD, sequence, 0),
                               "all_gather: answering a rank", error);
    }
    for (int64_t r = 0; parts != NULL && r < t->size; r++) free(parts[r]);
    free(parts);
    free(lengths);
  }
  size_t at = 0;
  for (int64_t r = 0; r < t->size && result == HYDRA_OK; r++) {
    uint64_t n;
    if (length - at < 8 || (memcpy(&n, all + at, 8), n > length - at - 8)) {
      result = failed(error, "%s: rank 0's answer is cut short at rank %lld", "all_gather", (long long)r);
      break;
    }
    result = t->host->gathered(t->host->host, r, all + at + 8, (int64_t)n, error);
    at += 8 + n;
  }
  if (result == HYDRA_OK && at != length)
    result = failed(error, "%s: rank 0's answer has %lld bytes too many", "all_gather", (long long)(length - at));
  free(all);
  return result;
}

static int32_t all_gather(void *instance, const uint8_t *bytes, int64_t count, hydra_error *error) {
  transport *t = instance;
  pthread_mutex_lock(&t->lock);
  int32_t result = all_gather_locked(t, bytes, count, error);
  pthread_mutex_unlock(&t->lock);
  return result;
}

/* Tells the other ranks (best effort, briefly), then ends this process. */
static void abort_job(void *instance, int32_t code) {
  transport *t = instance;
  int locked = 0;
  /* The lock may be held by this very thread (an abort from inside a callback): then no telling. */
  for (double deadline = now() + 1; !(locked = pthread_mutex_trylock(&t->lock) == 0) && now() < deadline;)
    pause_briefly(1000);
  if (locked) {
    void **requests = calloc((size_t)t->size, sizeof(void *));
    ucp_request_param_t param = {.op_attr_mask = 0};
    uint64_t word = (uint64_t)code;
    for (int64_t r = 0; requests != NULL && r < t->size; r++)
      if (r != t->rank && t->endpoints[r] != NULL)
        requests[r] =
          ucp_tag_send_nbx(t->endpoints[r], &word, sizeof word, make_tag(CH_ABORT, (uint64_t)code & 0xff, t->rank), &param);
    for (double deadline = now() + 0.5; now() < deadline;) {
      int pending = 0;
      for (int64_t r = 0; requests != NULL && r < t->size; r++)
        if (requests[r] != NULL && !UCS_PTR_IS_ERR(requests[r]) && ucp_request_check_status(requests[r]) == UCS_INPROGRESS)
          pending = 1;
      if (!pending) break;
      progress(t);
    }
  }
  fflush(NULL);
  _exit(code > 0 && code < 256 ? code : 1);
}

static void close_transport(void *instance) {
  transport *t = instance;
  pthread_mutex_lock(&t->lock);
  hydra_error ignored;
  for (double deadline = now() + 5; t->sends != NULL && now() < deadline;) {
    reap(t, 0, &ignored);
    progress(t);
  }
  for (int64_t r = 0; r < t->size; r++)
    for (incoming *in = t->queue_head[r]; in != NULL; in = in->next) {
      if (in->header_request != NULL) {
        ucp_request_cancel(t->worker, in->header_request);
        ucp_request_free(in->header_request);
      }
      if (in->payload_request != NULL) {
        ucp_request_cancel(t->worker, in->payload_request);
        ucp_request_free(in->payload_request);
      }
    }
  for (outgoing *o = t->sends; o != NULL; o = o->next)
    for (int i = 0; i < 2; i++)
      if (o->requests[i] != NULL) ucp_request_free(o->requests[i]);
  pthread_mutex_unlock(&t->lock);
  destroy(t);
}

int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error) {
  if (host->abi_version != HYDRA_PLUGIN_ABI_VERSION) {
    snprintf(error->message, sizeof error->message, "built for plugin ABI version %d", HYDRA_PLUGIN_ABI_VERSION);
    return HYDRA_ERROR;
  }
  hydra_transport t = {.name = "ucx", .create = create, .send = transport_send, .poll = transport_poll, .is_idle = is_idle,
                       .all_gather = all_gather, .abort = abort_job, .close = close_transport};
  return registrar->add_transport(registrar->host, &t, error);
}
