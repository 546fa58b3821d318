// Shared start-up for commands that run the model: the parallel context (one rank, or MPI when
// launched by mpirun/srun), the kernel backend, and thread settings.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "kernels/backend.h"
#include "mpi/parallel_context.h"

namespace alem::cli {

struct ParallelOptions {
  int tp = 1, pp = 1, dp = 1;
  int ep = 1;  // expert-parallel slices of the tp group (MoE models; must divide tp)
};

// True when this process was started by an MPI launcher (mpirun or srun with PMIx).
bool launched_by_mpi();
// One rank when tp*pp*dp == 1 and no launcher; otherwise an MPI context (world size must match).
ParallelContext make_context(const ParallelOptions& options);
// Called with the reason when a command fails on any rank: in a multi-rank job this aborts
// every rank (fail fast); alone it returns so main() can exit non-zero.
void fail_job(ParallelContext* ctx, const std::string& why);

void add_parallel_flags(CLI::App& cmd, ParallelOptions& options);

// The text of a --chat-template FILE (read before the sandbox, which hides the file system).
// Throws alem::Error naming the path when it cannot be read.
std::string read_chat_template_file(const std::string& path);

}  // namespace alem::cli
