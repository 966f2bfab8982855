/*
 * hydra_plugin.h: the C ABI through which a shared library adds plugins to hydra-mpi.
 *
 * A job names libraries in job.toml (`[plugins] load = ["libsrtf.so"]`, relative to the job file).
 * hydra-mpi opens each with dlopen, calls `hydra_plugin_abi_version` and refuses the library unless
 * it returns HYDRA_PLUGIN_ABI_VERSION, then calls `hydra_plugin_register` once. Through the
 * registrar the library adds any number of schedulers, partitioners, transports and kernels, each
 * by name, as a table of function pointers plus a context pointer. A name already registered (by
 * hydra-mpi or by a library loaded earlier) is an error.
 *
 * Versions. ABI version 1 covers schedulers, partitioners and transports. Version 2 adds kernels
 * (`hydra_kernels`, `hydra_registrar.add_kernels`) and changes nothing of version 1: every struct
 * of version 1 keeps its layout, and the registrar only grows at its end. A host of version 2 loads
 * libraries built against version 1 or 2 and refuses any other. A table that may grow again
 * (`hydra_kernels`) starts with its own version and size, so that a later header can add functions
 * at its end without breaking libraries built against this one.
 *
 * General rules
 * - Every integer is fixed-width; sizes and indices are int64_t. Strings are NUL-terminated UTF-8.
 * - Pointers the host passes to a callback are valid only during that call, unless stated
 *   otherwise next to the type. The plugin must not free them.
 * - Pointers the plugin passes to the host (names, tables) are copied by the host during the call
 *   that receives them; the plugin may free or reuse them afterwards.
 * - A library is never unloaded (no dlclose): its code and static data live until the process ends.
 * - Every callback that can fail returns an int32_t: HYDRA_OK, or an error code with a message
 *   written into the `hydra_error` it was given. The host stops the job and shows the message with
 *   the library's file and the plugin's name (exit status 1; HYDRA_ERROR_INPUT from a partitioner
 *   or from `create` means the user's job file is wrong: exit status 2).
 * - The host checks what a plugin returns (indices in range, shards that cover the model, tensor
 *   shapes that fit); it cannot protect itself from a plugin that writes through a bad pointer or
 *   crashes: such a plugin still ends the process.
 */
#ifndef HYDRA_PLUGIN_H
#define HYDRA_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this file. */
#define HYDRA_PLUGIN_ABI_VERSION 2
/* The oldest version a host of this version still loads. */
#define HYDRA_PLUGIN_ABI_OLDEST_VERSION 1

/* Return codes. */
#define HYDRA_OK 0
/* The user's input is wrong (an option of the job file, a budget that cannot be met). */
#define HYDRA_ERROR_INPUT 1
/* Anything else: the plugin failed. */
#define HYDRA_ERROR 2

/* Bytes of `hydra_error.message`, its terminating NUL included. */
#define HYDRA_ERROR_MESSAGE_BYTES 1024

/*
 * Where a failing callback says why. Owned by the host, zero-filled before each call; the plugin
 * writes a NUL-terminated message of at most HYDRA_ERROR_MESSAGE_BYTES bytes (snprintf into
 * `message`). Valid only during the call.
 */
typedef struct hydra_error {
  char message[HYDRA_ERROR_MESSAGE_BYTES];
} hydra_error;

/*
 * One option of the plugin's table in job.toml (`[scheduler]` or `[partitioner]` without `name`),
 * as a TOML literal: `3`, `0.5`, `"text"`, `true`, `[1, 2]`. Owned by the host, valid during the
 * call that receives it.
 */
typedef struct hydra_option {
  const char *key;
  const char *value;
} hydra_option;

/* ---------------------------------------------------------------------------------------------
 * Schedulers: which ready shard task runs on which free device.
 * ------------------------------------------------------------------------------------------- */

#define HYDRA_FORWARD 0
#define HYDRA_BACKWARD 1

/* Where a shard's state is (`hydra_ready_task.state`). */
#define HYDRA_STATE_HOST 0
#define HYDRA_STATE_DEVICE 1 /* on device `state_device` */
#define HYDRA_STATE_DISK 2
#define HYDRA_STATE_ELSEWHERE 3 /* held by another process (its home rank) */

/*
 * One ready shard task: the next task of a model's chain that is not running. Owned by the host,
 * valid during `schedule`.
 */
typedef struct hydra_ready_task {
  int64_t model;
  int64_t shard;
  int32_t direction; /* HYDRA_FORWARD or HYDRA_BACKWARD */
  int32_t state;     /* HYDRA_STATE_* */
  int64_t step;
  /* Estimated seconds of this task (measured times of earlier steps once there are some). */
  double estimated_seconds;
  /* Estimated seconds of everything this model has left, this task included. */
  double remaining_seconds;
  /* The device holding the shard's state when `state` is HYDRA_STATE_DEVICE, else -1. */
  int64_t state_device;
  /* The device that ran this model's previous task (holding its input), or -1. */
  int64_t last_device;
  /* When the task became ready, seconds since the start. */
  double ready_since;
  int64_t shard_count;
  /* The device holding this shard's state under a backend of separate processes, or -1. */
  int64_t home;
  /* The devices this task may run on: `allowed_count` of them; `allowed_devices` NULL means any. */
  const int64_t *allowed_devices;
  int64_t allowed_count;
  /* What running the task away from `home` costs: bytes of the shard's state, and seconds. */
  int64_t move_bytes;
  double move_seconds;
} hydra_ready_task;

/* The job at one scheduling decision. Owned by the host, valid during `schedule`. */
typedef struct hydra_scheduler_view {
  double now; /* seconds since the start */
  const hydra_ready_task *ready;
  int64_t ready_count;
  const int64_t *free_devices; /* device indices, ascending */
  int64_t free_count;
  int64_t device_count;
  int64_t model_count;
  /* Models that will never have a ready task again (done or stopped), ascending. */
  const int64_t *finished;
  int64_t finished_count;
} hydra_scheduler_view;

/* Run `view.ready[ready_index]` on device `device` (one of `view.free_devices`). */
typedef struct hydra_assignment {
  int64_t ready_index;
  int64_t device;
} hydra_assignment;

/*
 * A scheduler, as registered. The host copies the struct and the name; `context` is the plugin's
 * and is passed back unchanged to `create`; it must stay valid until the process ends.
 *
 * Threads: for one instance, the host never calls two of its callbacks at once, but it may call
 * them from different threads over time (the coordinator's thread, holding its lock: keep
 * `schedule` short). Different instances may exist at once (`hydra-mpi plan` makes one per
 * scheduler in turn; a test may make several): `context` is shared by all of them.
 */
typedef struct hydra_scheduler {
  const char *name;
  void *context;
  /*
   * Makes an instance for one job from its `[scheduler]` options and the job's seed, stored in
   * `*instance` (NULL is a valid instance). Unknown or bad options: HYDRA_ERROR_INPUT with a
   * message. May be NULL: then every instance is `context` and takes no options.
   */
  int32_t (*create)(
    void *context, const hydra_option *options, int64_t option_count, uint64_t seed, void **instance,
    hydra_error *error);
  /*
   * Writes at most `capacity` assignments (capacity = min(ready_count, free_count)) into `out` and
   * their number into `*count`. Each names a distinct ready task and a distinct free device (and
   * one of the task's `allowed_devices`). Returning none leaves the free devices idle until the next
   * completion; leaving every device idle while tasks are ready stops the job. `out` is the host's,
   * valid during the call.
   */
  int32_t (*schedule)(
    void *instance, const hydra_scheduler_view *view, hydra_assignment *out, int64_t capacity, int64_t *count,
    hydra_error *error);
  /* Frees an instance; called once per instance made by `create`. May be NULL. */
  void (*destroy)(void *instance);
} hydra_scheduler;

/* ---------------------------------------------------------------------------------------------
 * Partitioners: a model's shard boundaries from its blocks' costs and the device budget.
 * ------------------------------------------------------------------------------------------- */

/* What the host knows of one block. Owned by the host, valid during `partition`. */
typedef struct hydra_block {
  const char *name; /* "wte", "h.3", "head" */
  int64_t parameter_bytes;
  /* Bytes of a replica of another block's parameters (a tied weight). */
  int64_t replica_bytes;
  /* Parameters, gradients and optimizer state, and a replica's value and gradient. */
  int64_t state_bytes;
  /* Bytes per sample the forward keeps for the backward, its output included. */
  int64_t activation_bytes_per_sample;
  int64_t forward_flops_per_sample;
  /* Seconds of one forward + backward: measured, or a FLOP count standing in for time. */
  double seconds;
} hydra_block;

/*
 * One model to cut. Owned by the host, valid during `partition`; the callbacks may be called only
 * during `partition`, from the thread that called it, with `request` itself.
 */
typedef struct hydra_partition_request {
  const hydra_block *blocks;
  int64_t block_count;
  int64_t batch_size;
  /* Optimizer state tensors per parameter: sgd 1, adamw 2. */
  int64_t state_copies;
  /* Device memory in bytes; INT64_MAX: unlimited. */
  int64_t budget;
  /* What one shard may use: `budget`, or half of it with double buffering. */
  int64_t shard_budget;
  int32_t double_buffering;
  int32_t activation_checkpointing;
  const hydra_option *options;
  int64_t option_count;
  /*
   * Bytes the shard of blocks [first, end) holds on a device while one of its tasks runs: its state
   * and its working set (activations, scratch, tied weights in transit), exactly what the runtime
   * allocates. Not a sum over blocks: call it for each candidate range. Saturates at INT64_MAX;
   * returns -1 for a range outside 0 <= first < end <= block_count.
   */
  int64_t (*footprint)(const struct hydra_partition_request *request, int64_t first, int64_t end);
  /* Seconds of one forward + backward of the shard [first, end); -1 for a bad range. */
  double (*seconds)(const struct hydra_partition_request *request, int64_t first, int64_t end);
  /* The host's, for the callbacks. */
  void *host;
} hydra_partition_request;

/*
 * A partitioner, as registered (copied by the host; `context` lives until the process ends).
 * Threads: `partition` is called from the thread that plans a job, never concurrently with itself.
 */
typedef struct hydra_partitioner {
  const char *name;
  void *context;
  /*
   * Cuts the model: writes the end (exclusive) of each shard, ascending, into `ends` (capacity
   * `block_count`; the last is `block_count`) and their number into `*shard_count`. Every shard
   * must be non-empty and have footprint(first, end) <= shard_budget. Bad options, or a budget that
   * cannot be met: HYDRA_ERROR_INPUT with a message. `ends` is the host's, valid during the call.
   */
  int32_t (*partition)(
    void *context, const hydra_partition_request *request, int64_t *ends, int64_t *shard_count, hydra_error *error);
} hydra_partitioner;

/* ---------------------------------------------------------------------------------------------
 * Transports: how the ranks of a distributed job reach each other. A registered transport is a
 * backend: `[cluster] backend = "<name>"`; hydra-mpi's distributed runtime does everything else
 * (homes, moves, remote tasks, gathers) on top of it, as it does for the built-in "mpi".
 * ------------------------------------------------------------------------------------------- */

#define HYDRA_MESSAGE_CONTROL 0
#define HYDRA_MESSAGE_TENSOR 1

/* What a tensor message carries (its key's `kind`). */
#define HYDRA_KEY_ACTIVATION 1
#define HYDRA_KEY_GRADIENT 2
#define HYDRA_KEY_TIED_VALUE 3
#define HYDRA_KEY_TIED_GRADIENT 4
#define HYDRA_KEY_SHARD_STATE 5
#define HYDRA_KEY_GATHER 6
#define HYDRA_KEY_USER 7

/* At most this many dimensions in a tensor message. */
#define HYDRA_MAX_DIMENSIONS 8

/*
 * One message. A control message is `bytes` (`byte_count` of them, opaque to the transport); a
 * tensor message is a key (kind, model, index, step) and `count` = product(shape) Float32 values at
 * `data`, row-major. Two messages from one source must arrive in the order they were sent.
 * Ownership: see `send` and `deliver`.
 */
typedef struct hydra_message {
  int32_t type; /* HYDRA_MESSAGE_CONTROL or HYDRA_MESSAGE_TENSOR */
  int32_t kind; /* tensor: HYDRA_KEY_* */
  int64_t model;
  int64_t index;
  int64_t step;
  int64_t dimensions; /* tensor: 0 ... HYDRA_MAX_DIMENSIONS */
  int64_t shape[HYDRA_MAX_DIMENSIONS];
  const float *data;
  const uint8_t *bytes; /* control */
  int64_t byte_count;
} hydra_message;

/*
 * What the host offers a transport instance. Owned by the host; valid from `create` until `close`
 * returns. Each function may be called only from inside the transport callback stated.
 */
typedef struct hydra_transport_host {
  void *host;
  /*
   * From inside `send` or `poll`: the send with this `token` is complete, and the message's buffers
   * go back to the host. Until then they stay valid and unchanged, so a transport may send from
   * them without copying. Every token must be released exactly once, before `is_idle` returns 1.
   */
  void (*send_done)(void *host, uint64_t token);
  /*
   * From inside `poll`: a whole message from rank `source` has arrived. The host copies it during
   * the call; the buffers stay the plugin's. Returns HYDRA_ERROR (with `error` set) for a malformed
   * message (a shape too large, a source out of range); `poll` should then return that error.
   */
  int32_t (*deliver)(void *host, int64_t source, const hydra_message *message, hydra_error *error);
  /*
   * From inside `all_gather`: rank `rank`'s bytes (copied by the host during the call). Called once
   * for every rank, in any order.
   */
  int32_t (*gathered)(void *host, int64_t rank, const uint8_t *bytes, int64_t count, hydra_error *error);
} hydra_transport_host;

/* What a transport instance says about itself, filled by `create`. */
typedef struct hydra_transport_info {
  int64_t rank; /* 0 ... size - 1; rank 0 coordinates */
  int64_t size;
  char host_name[256]; /* the node this rank runs on, NUL-terminated */
  /* Bytes per second one way between two ranks (measured or estimated); 0: unknown. */
  double bandwidth;
} hydra_transport_info;

/*
 * A transport, as registered (copied by the host; `context` lives until the process ends).
 *
 * Threads: `create` and `all_gather` run on the thread that runs the job (every rank calls
 * `all_gather` in the same order: it is a collective), before the runtime's progress thread starts.
 * `send`, `poll` and `is_idle` are then called by that progress thread alone, never concurrently
 * with each other. `abort` may be called from any thread, at any time. `close` once, last.
 */
typedef struct hydra_transport {
  const char *name;
  void *context;
  /*
   * Joins the job (every rank of it: under mpirun, each process is one rank) and fills `info`.
   * `host` stays valid until `close`. Stores the instance in `*instance`.
   */
  int32_t (*create)(
    void *context, const hydra_transport_host *host, hydra_transport_info *info, void **instance, hydra_error *error);
  /* Before the first message: keys will name models below `models` and indices below `indices`. */
  int32_t (*prepare)(void *instance, int64_t models, int64_t indices, hydra_error *error);
  /*
   * Starts sending `message` to rank `destination` and returns at once. The message and its buffers
   * stay valid until the transport calls `host->send_done(host->host, token)`. A failed send returns
   * HYDRA_ERROR with a message: the job stops.
   */
  int32_t (*send)(void *instance, int64_t destination, const hydra_message *message, uint64_t token, hydra_error *error);
  /* Moves messages in flight on, calling `host->deliver` for each that arrived whole. Never blocks. */
  int32_t (*poll)(void *instance, hydra_error *error);
  /* 1: no send or receive in flight; 0 otherwise. */
  int32_t (*is_idle)(void *instance);
  /* Every rank's `bytes`, on every rank: calls `host->gathered` for each rank. */
  int32_t (*all_gather)(void *instance, const uint8_t *bytes, int64_t count, hydra_error *error);
  /* Ends every rank of the job with `code`. Should not return; if it does, the host exits. */
  void (*abort)(void *instance, int32_t code);
  /* Releases the instance; nothing is sent afterwards. */
  void (*close)(void *instance);
} hydra_transport;

/* ---------------------------------------------------------------------------------------------
 * Kernels (ABI version 2): a device's memory and everything a training step computes on it. A
 * registered kernels table is selected by `[cluster] kernels = "<name>"`; hydra-mpi makes one
 * instance per device of the job (`create`) and calls only that instance's functions for it.
 *
 * Memory. A device's memory belongs to its kernels plugin. Unless `flags` holds
 * HYDRA_KERNELS_HOST_MEMORY, every tensor on the device is a buffer of `allocate`; the host never
 * reads or writes one itself: it gets bytes on and off the device only through `copy_to_device`,
 * `copy_to_host` and `copy_on_device`, and hands the addresses to this instance's functions. A
 * device address is like a CUDA device pointer: the host may pass `buffer + offset` (in bytes, a
 * multiple of 4, inside a buffer of `allocate`) anywhere a buffer is expected, and never
 * dereferences it. With HYDRA_KERNELS_HOST_MEMORY, tensors are host memory the host allocates,
 * the memory functions may be NULL (they are never called), and every `float *` is a host pointer.
 *
 * The ordering rule (instead of streams). Each instance is one in-order queue of work, like one CUDA
 * stream per device:
 * - A compute function may return before its work has finished (an asynchronous launch). Work
 *   issued to one instance takes effect in the order the calls were made, whichever thread made them.
 * - The copies are complete when they return, with every earlier call of the instance finished
 *   first: a `copy_to_host` sees what earlier kernels wrote, and the host may reuse or read its
 *   host buffer at once. `sum_of_squares` and `softmax_cross_entropy` return host values, so they
 *   too are complete when they return.
 * - `deallocate` may be called while earlier work on the buffer is still running: the plugin must
 *   not hand the memory out again before that work has finished (stream-ordered free).
 * - `synchronize` returns once every call issued so far has finished.
 * - Token and target indices (`const int32_t *`) are host memory, valid only during the call: an
 *   asynchronous plugin copies them before returning.
 *
 * Threads. The host may call an instance's functions from several threads at once (a device's task
 * computing while the next shard's state is copied onto the same device): every function must be
 * safe to call concurrently with any other of the same instance, on different buffers. Different
 * instances (devices) are used concurrently.
 *
 * Conventions of the compute functions (the `Kernels` protocol of hydra-mpi's HydraPluginAPI):
 * - Matrices are row-major: an "(r, c)" buffer has r rows of c contiguous floats unless a leading
 *   dimension (`ld*`, elements between row starts) says otherwise.
 * - Outputs are overwritten (`=`) unless the function says it accumulates (`+=`).
 * - Results must be deterministic: the same inputs and thread count give the same bits on every
 *   call. hydra-mpi's exactness guarantee (a model's weights do not depend on the schedule) rests on
 *   this.
 * - No function may fail. A plugin that cannot go on (a device error) prints why and ends the
 *   process; `allocate` alone reports a failure, by returning NULL (the host then stops the job,
 *   exit status 1, naming the library and the kernels).
 * - Booleans (`trans_a`, `trans_b`) are 0 or 1.
 * ------------------------------------------------------------------------------------------- */

/* `hydra_kernels.flags`: the kernels compute on host memory (no memory functions). */
#define HYDRA_KERNELS_HOST_MEMORY 1u

/*
 * A kernels plugin, as registered. The host copies the table and the name; `context` must stay
 * valid until the process ends. `abi_version` = HYDRA_PLUGIN_ABI_VERSION and `struct_size` =
 * sizeof(hydra_kernels) as the library was compiled. The host refuses a table of a version it does
 * not speak (before 2, or after its own), one smaller than the table of the version it claims (a
 * later host reads only the functions a version-2 table has), and one whose required functions are
 * NULL (each named). Every function is required except `create` and `destroy`, and except the
 * memory functions under HYDRA_KERNELS_HOST_MEMORY.
 */
typedef struct hydra_kernels {
  uint32_t abi_version;
  uint32_t struct_size;
  const char *name;
  void *context;
  uint32_t flags; /* HYDRA_KERNELS_* */

  /*
   * Makes the instance of one device: `threads` compute threads (`[cluster] threads_per_device`),
   * `device` a label for messages ("device 0"). Stores it in `*instance`. HYDRA_ERROR_INPUT: the
   * job cannot run on these kernels (exit status 2); HYDRA_ERROR: the device failed (exit status 1).
   * May be NULL: every instance is then `context`.
   */
  int32_t (*create)(void *context, int64_t threads, const char *device, void **instance, hydra_error *error);
  /*
   * Frees an instance once nothing of it is in use (every buffer deallocated or abandoned: the host
   * may end the process without freeing). May be NULL.
   */
  void (*destroy)(void *instance);

  /* -- Memory ------------------------------------------------------------------------------- */

  /*
   * `bytes` (at least 1) of device memory, 64-byte aligned, zero-filled when `zeroed` is 1. NULL
   * when the device has no room (the host stops the job; it keeps its own budget, so this means
   * the device holds less than `[cluster] device_memory`).
   */
  void *(*allocate)(void *instance, int64_t bytes, int32_t zeroed);
  /* Frees a buffer of `allocate` (`bytes` as allocated). */
  void (*deallocate)(void *instance, void *buffer, int64_t bytes);
  /* Host -> device: `bytes` from host memory `source` to device memory `destination`. */
  void (*copy_to_device)(void *instance, void *destination, const void *source, int64_t bytes);
  /* Device -> host. */
  void (*copy_to_host)(void *instance, void *destination, const void *source, int64_t bytes);
  /* Device -> device, both buffers of this instance. */
  void (*copy_on_device)(void *instance, void *destination, const void *source, int64_t bytes);
  /* Returns once every call issued so far has finished. */
  void (*synchronize)(void *instance);

  /* -- Matrix products ---------------------------------------------------------------------- */

  /*
   * c(m, n) = alpha * op(a) * op(b) + beta * c, op(a) (m, k), op(b) (k, n); a is stored (m, k), or
   * (k, m) with trans_a; b is (k, n), or (n, k) with trans_b. With beta = 0, c is not read.
   */
  void (*gemm)(
    void *instance, int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
    int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
  /* `batch` independent gemms; matrix i of a starts at a + i * stride_a (likewise b and c). */
  void (*gemm_batched)(
    void *instance, int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
    int64_t lda, int64_t stride_a, const float *b, int64_t ldb, int64_t stride_b, float beta, float *c, int64_t ldc,
    int64_t stride_c, int64_t batch);

  /* -- Bias --------------------------------------------------------------------------------- */

  /* y(rows, cols) += bias(cols), broadcast over rows. */
  void (*add_bias)(void *instance, float *y, const float *bias, int64_t rows, int64_t cols);
  /* dbias(cols) += sum over rows of dy(rows, cols). */
  void (*accumulate_bias_gradient)(void *instance, const float *dy, int64_t rows, int64_t cols, float *dbias);

  /* -- Activations, elementwise over `count` ----------------------------------------------- */

  /* y = GELU(x), GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
  void (*gelu_forward)(void *instance, const float *x, float *y, int64_t count);
  /* dx = dy * GELU'(x). */
  void (*gelu_backward)(void *instance, const float *x, const float *dy, float *dx, int64_t count);
  /* y = max(x, 0). */
  void (*relu_forward)(void *instance, const float *x, float *y, int64_t count);
  /* dx = x > 0 ? dy : 0. */
  void (*relu_backward)(void *instance, const float *x, const float *dy, float *dx, int64_t count);

  /* -- LayerNorm over the last dimension ------------------------------------------------------ */

  /*
   * y(rows, cols) = (x - mean) * rstd * gamma + beta per row; writes mean(rows) and rstd(rows),
   * rstd = 1 / sqrt(var + eps) with var the biased variance.
   */
  void (*layer_norm_forward)(
    void *instance, const float *x, const float *gamma, const float *beta, float *y, float *mean, float *rstd,
    int64_t rows, int64_t cols, float eps);
  /*
   * dx(rows, cols) += dL/dx (accumulates: the residual stream's gradient is already there);
   * dgamma(cols) += ..., dbeta(cols) += ...
   */
  void (*layer_norm_backward)(
    void *instance, const float *dy, const float *x, const float *gamma, const float *mean, const float *rstd,
    float *dx, float *dgamma, float *dbeta, int64_t rows, int64_t cols);

  /* -- Causal multi-head self-attention ------------------------------------------------------- */

  /*
   * qkv(B, T, 3C) holds per token [q(C) k(C) v(C)], head h in columns h*hs ... (h+1)*hs - 1 of
   * each, hs = C / heads. For every (b, h): S = q k^T / sqrt(hs), S[t, u] = -inf for u > t;
   * P = softmax over u, written to probs(B, heads, T, T) with zeros above the diagonal;
   * out(B, T, C)[b, :, h*hs ...] = P v.
   */
  void (*attention_forward)(
    void *instance, const float *qkv, float *out, float *probs, int64_t batch, int64_t seq, int64_t channels,
    int64_t heads);
  /*
   * dqkv(B, T, 3C) = the gradient of attention_forward (overwritten); `scratch` holds
   * B * heads * T * T floats for the plugin's use.
   */
  void (*attention_backward)(
    void *instance, const float *dout, const float *qkv, const float *probs, float *dqkv, float *scratch,
    int64_t batch, int64_t seq, int64_t channels, int64_t heads);

  /* -- Embeddings (tokens: host memory, B*T of them, each below wte's rows) ------------------- */

  /* out(B*T, C)[i] = wte[tokens[i]] + wpe[i % T]. */
  void (*embedding_forward)(
    void *instance, const int32_t *tokens, const float *wte, const float *wpe, float *out, int64_t batch, int64_t seq,
    int64_t channels);
  /* dwte[tokens[i]] += dout[i]; dwpe[i % T] += dout[i], rows visited in order i = 0, 1, ... */
  void (*embedding_backward)(
    void *instance, const float *dout, const int32_t *tokens, float *dwte, float *dwpe, int64_t batch, int64_t seq,
    int64_t channels);

  /* -- Loss ------------------------------------------------------------------------------------ */

  /*
   * Softmax cross-entropy of logits(rows, classes) against targets(rows) (host memory). Writes the
   * summed loss (natural log) to `*loss` and the number of rows whose arg-max (the first maximum)
   * is the target to `*correct` (both host memory). If `dlogits` is not NULL it is overwritten
   * with (softmax(logits) - onehot(target)) * grad_scale; it may be `logits` itself.
   */
  void (*softmax_cross_entropy)(
    void *instance, const float *logits, const int32_t *targets, int64_t rows, int64_t classes, float *dlogits,
    float grad_scale, double *loss, int64_t *correct);

  /* -- Elementwise and reductions -------------------------------------------------------------- */

  /* out = a + b (out may be a or b). */
  void (*add)(void *instance, const float *a, const float *b, float *out, int64_t count);
  /* y += x. */
  void (*accumulate)(void *instance, const float *x, float *y, int64_t count);
  /* dst = src. */
  void (*copy)(void *instance, const float *src, float *dst, int64_t count);
  /* x = value. */
  void (*fill)(void *instance, float *x, float value, int64_t count);
  /* x *= factor. */
  void (*scale)(void *instance, float *x, float factor, int64_t count);
  /* The sum of x^2, accumulated in double, to `*result` (host memory). */
  void (*sum_of_squares)(void *instance, const float *x, int64_t count, double *result);

  /* -- Optimizer updates, in place, elementwise (`step` counts from 1) -------------------------- */

  /*
   * SGD with momentum and coupled weight decay (PyTorch's torch.optim.SGD, dampening 0):
   * g = grad + weight_decay * param; buf = momentum * buf + g (buf = g at step 1); param -= lr * buf.
   */
  void (*sgd_step)(
    void *instance, float *param, const float *grad, float *momentum_buffer, int64_t count, float lr, float momentum,
    float weight_decay, int64_t step);
  /*
   * AdamW (PyTorch's torch.optim.AdamW): param *= 1 - lr * weight_decay; m = b1 m + (1 - b1) g;
   * v = b2 v + (1 - b2) g^2; param -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps).
   */
  void (*adamw_step)(
    void *instance, float *param, const float *grad, float *m, float *v, int64_t count, float lr, float beta1,
    float beta2, float eps, float weight_decay, int64_t step);
} hydra_kernels;

/* ---------------------------------------------------------------------------------------------
 * Registration.
 * ------------------------------------------------------------------------------------------- */

/* What the host says about itself. Valid during `hydra_plugin_register`. */
typedef struct hydra_host {
  /* HYDRA_PLUGIN_ABI_VERSION of the host. */
  uint32_t abi_version;
  /* The library's path as the host opened it. */
  const char *plugin_path;
} hydra_host;

/*
 * How a library adds its plugins. Each function copies the table it is given and returns HYDRA_OK,
 * or HYDRA_ERROR with a message (a name already registered, a NULL callback that is required).
 * Valid during `hydra_plugin_register`, on the thread that called it.
 */
typedef struct hydra_registrar {
  void *host;
  int32_t (*add_scheduler)(void *host, const hydra_scheduler *scheduler, hydra_error *error);
  int32_t (*add_partitioner)(void *host, const hydra_partitioner *partitioner, hydra_error *error);
  int32_t (*add_transport)(void *host, const hydra_transport *transport, hydra_error *error);
  /* Since ABI version 2 (a library of version 1 does not know it is there). */
  int32_t (*add_kernels)(void *host, const hydra_kernels *kernels, hydra_error *error);
} hydra_registrar;

/*
 * The two functions a library exports (plain C names: `extern "C"` in C++, `@_cdecl` in Swift,
 * `#[no_mangle] extern "C"` in Rust).
 *
 * `hydra_plugin_abi_version` returns HYDRA_PLUGIN_ABI_VERSION as the library was compiled; the host
 * calls it first and refuses the library unless it is between HYDRA_PLUGIN_ABI_OLDEST_VERSION and
 * its own.
 *
 * `hydra_plugin_register` is then called once, on the thread that loads the job: it registers the
 * library's plugins and returns HYDRA_OK, or an error with a message (the host stops).
 */
#if !defined(__swift__) /* Swift declares them itself, with @_cdecl */
uint32_t hydra_plugin_abi_version(void);
int32_t hydra_plugin_register(const hydra_host *host, const hydra_registrar *registrar, hydra_error *error);
#endif

#define HYDRA_PLUGIN_ABI_VERSION_FUNCTION \
  uint32_t hydra_plugin_abi_version(void) { return HYDRA_PLUGIN_ABI_VERSION; }

#ifdef __cplusplus
}
#endif

#endif /* HYDRA_PLUGIN_H */
