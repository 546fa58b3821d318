/* mpi_hello: the smallest real MPI program, used by test_slurm_cluster.sh to prove that
 * `srun --mpi=pmix` wires Open MPI ranks together under the local Slurm cluster. Each rank
 * reports itself, and an all-reduce over the ranks proves they can talk, not just start. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char host[MPI_MAX_PROCESSOR_NAME];
  int host_length = 0;
  MPI_Get_processor_name(host, &host_length);

  int rank_sum = 0;
  MPI_Allreduce(&rank, &rank_sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  const int expected_sum = size * (size - 1) / 2;
  printf("mpi_hello rank %d of %d on %s: rank sum %d (%s)\n", rank, size, host, rank_sum,
         rank_sum == expected_sum ? "ok" : "WRONG");
  fflush(stdout);
  MPI_Finalize();
  return rank_sum == expected_sum ? 0 : 1;
}
