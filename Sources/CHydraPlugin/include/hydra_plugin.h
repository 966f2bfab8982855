/*
 * hydra_plugin.h: the C ABI through which a shared library adds plugins to hydra-mpi.
 *
 * A job names libraries in job.toml (`[plugins] load = ["libsrtf.so"]`, relative to the job file).
 * hydra-mpi opens each with dlopen, calls `hydra_plugin_abi_version` and refuses the library unless
 * it returns HYDRA_PLUGIN_ABI_VERSION, then calls `hydra_plugin_register` once. Through the
 * registrar the library adds any number of schedulers, partitioners and transports, each by name,
 * as a table of function pointers plus a context pointer. A name already registered (by hydra-mpi
 * or by a library loaded earlier) is an error.
 *
 * ABI version 1 covers schedulers, partitioners and transports. Kernels (device code) are not part
 * of version 1: hydra-mpi has no adapter for them yet, and a library cannot register any.
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

/* The version of this file. A library built against another version is refused. */
#define HYDRA_PLUGIN_ABI_VERSION 1

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
} hydra_registrar;

/*
 * The two functions a library exports (plain C names: `extern "C"` in C++, `@_cdecl` in Swift,
 * `#[no_mangle] extern "C"` in Rust).
 *
 * `hydra_plugin_abi_version` returns HYDRA_PLUGIN_ABI_VERSION as the library was compiled; the host
 * calls it first and refuses the library when it differs from its own.
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
