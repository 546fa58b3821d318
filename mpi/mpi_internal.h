// Shared between the .cc files of mpi/ only: this header includes mpi.h, so no header that code
// outside mpi/ includes may include it. It lets mpi_context.cc hand a freshly split communicator
// to an MpiProcessGroup without exposing MPI types in mpi_process_group.h.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <memory>
#include <string>

#include "mpi/mpi_process_group.h"

namespace alem {

// Wraps `comm` (ownership passes to the group, which frees it) with errors returned, not fatal.
std::unique_ptr<MpiProcessGroup> adopt_mpi_communicator(std::string name, MPI_Comm comm,
                                                        GroupMembers members,
                                                        size_t max_message_bytes);

// "MPI_ERR_TRUNCATE: message truncated" for an MPI return code.
std::string mpi_error_string(int code);

// A failed MPI call means a lost peer: abort the whole job (abort_job), naming `what` and the
// MPI error. Returns normally only when code == MPI_SUCCESS.
void check_mpi(int code, const char* what);

}  // namespace alem
