// FakeProcessGroup: N members of one process group inside one process, one thread per member, so
// a tensor-parallel layer (or a whole TP x PP replica) is unit-tested without MPI. Collectives
// meet at a shared rendezvous and reduce in member order, so every member gets bit-identical
// results, as real all-reduces give. Sends are buffered (they never block); receives wait.
//
// Each member must be used from its own thread, and all members must make the same collective
// calls in the same order, as with MPI. A collective whose members disagree (different call,
// count, root) throws alem::Error on every member; a member that does not arrive within the
// timeout (a thread that threw, say) makes the others throw instead of hanging the test.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mpi/parallel_context.h"
#include "mpi/process_group.h"

namespace alem {

// The members of one fake group; element i has rank i. Waits longer than timeout_s throw.
std::vector<std::unique_ptr<ProcessGroup>> make_fake_group(int size, const std::string& name = "tp",
                                                           double timeout_s = 60);

// A context per world rank of `layout`, all in this process, with fake world/tp/pp/dp/ep groups
// wired as make_mpi_context would wire them. Element r is world rank r's context; run each on
// its own thread.
std::vector<ParallelContext> make_fake_contexts(const ParallelLayout& layout,
                                                double timeout_s = 60);

}  // namespace alem
