#ifndef HYDRA_CMPI_SHIM_H
#define HYDRA_CMPI_SHIM_H

#include <mpi.h>

// OpenMPI defines its predefined handles as macros over the addresses of global objects
// (`&ompi_mpi_comm_world`, ...). Swift cannot import such macros, so each one is exposed here as a
// static inline getter. Integer constants that are plain literals (MPI_SUCCESS, MPI_ANY_SOURCE, ...)
// import as-is but are repeated here so that Swift code reads the same everywhere.

static inline MPI_Comm hydra_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm hydra_mpi_comm_self(void) { return MPI_COMM_SELF; }
static inline MPI_Comm hydra_mpi_comm_null(void) { return MPI_COMM_NULL; }

static inline MPI_Datatype hydra_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype hydra_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype hydra_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype hydra_mpi_int(void) { return MPI_INT; }
static inline MPI_Datatype hydra_mpi_int64(void) { return MPI_INT64_T; }

static inline MPI_Op hydra_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op hydra_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op hydra_mpi_min(void) { return MPI_MIN; }

static inline MPI_Errhandler hydra_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Errhandler hydra_mpi_errors_are_fatal(void) { return MPI_ERRORS_ARE_FATAL; }

static inline MPI_Status *hydra_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request hydra_mpi_request_null(void) { return MPI_REQUEST_NULL; }

static inline int hydra_mpi_any_source(void) { return MPI_ANY_SOURCE; }
static inline int hydra_mpi_any_tag(void) { return MPI_ANY_TAG; }
static inline int hydra_mpi_proc_null(void) { return MPI_PROC_NULL; }
static inline int hydra_mpi_success(void) { return MPI_SUCCESS; }
static inline int hydra_mpi_tag_ub_key(void) { return MPI_TAG_UB; }
static inline int hydra_mpi_undefined(void) { return MPI_UNDEFINED; }

static inline int hydra_mpi_thread_single(void) { return MPI_THREAD_SINGLE; }
static inline int hydra_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int hydra_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int hydra_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }

static inline int hydra_mpi_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline int hydra_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }

/// The source, tag and error fields of a status (their names are implementation-defined in spirit,
/// though the standard fixes MPI_SOURCE / MPI_TAG / MPI_ERROR).
static inline int hydra_mpi_status_source(const MPI_Status *s) { return s->MPI_SOURCE; }
static inline int hydra_mpi_status_tag(const MPI_Status *s) { return s->MPI_TAG; }
static inline int hydra_mpi_status_error(const MPI_Status *s) { return s->MPI_ERROR; }

/// MPI's message for an error code, written into `buffer` (at least MPI_MAX_ERROR_STRING bytes);
/// returns the length, or 0 when the code is not one MPI knows.
static inline int hydra_mpi_error_string(int code, char *buffer) {
  int length = 0;
  if (MPI_Error_string(code, buffer, &length) != MPI_SUCCESS) {
    buffer[0] = 0;
    return 0;
  }
  buffer[length < MPI_MAX_ERROR_STRING ? length : MPI_MAX_ERROR_STRING - 1] = 0;
  return length;
}

/// The largest tag this MPI accepts (MPI_TAG_UB attribute of MPI_COMM_WORLD); -1 if not available.
static inline int hydra_mpi_tag_upper_bound(void) {
  int *value = 0;
  int flag = 0;
  if (MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &value, &flag) != MPI_SUCCESS || !flag || !value)
    return -1;
  return *value;
}

#endif
