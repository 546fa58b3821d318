#!/usr/bin/env bash
# test_slurm_cluster.sh: end-to-end check of the Slurm side of alem on a real one-node cluster
# (slurm/local/slurm-local.sh): PMIx MPI launch, job arrays, SIGUSR1 to a batch script, requeue
# with SLURM_RESTART_COUNT, and slurm/alem-convert.sbatch importing the real model with the real
# alem. The serve and sweep scripts have their own test (test_slurm_serve.sh). Ends by stopping
# the cluster by PID and checking nothing is left.
#
# Needs root, Slurm, munge, PMIx and Open MPI (scripts/install-deps.sh). Exits 77 (ctest: skipped)
# when they are missing. Stops itself after TEST_DEADLINE_S and always tears the cluster down.
set -euo pipefail

readonly TEST_NAME=slurm-e2e
readonly TEST_DEADLINE_S=${ALEM_SLURM_TEST_DEADLINE_S:-240}
# shellcheck source=tests/e2e/slurm/slurm_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_test_lib.sh"

require_tools slurmctld slurmd munged mungekey sbatch srun scontrol mpicc ss
ALEM=$(realpath -m "${ALEM_BINARY:-$REPO_ROOT/build/alem}")
readonly ALEM
GGUF=$(realpath -m "${ALEM_TEST_GGUF:-$REPO_ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}")
readonly GGUF
[ -x "$ALEM" ] || { echo "skipped: no alem binary at $ALEM"; exit "$SKIP"; }
[ -s "$GGUF" ] || { echo "skipped: no model at $GGUF (scripts/fetch-model.sh)"; exit "$SKIP"; }

slurm_test_start

say "srun --mpi=list offers pmix"
grep -qw pmix <<<"$(srun --mpi=list 2>&1)" || fail "srun --mpi=list has no pmix: $(srun --mpi=list 2>&1)"

say "4 MPI ranks under sbatch + srun --mpi=pmix"
mkdir -p "$WORK_DIR/mpi"
mpicc -O2 -o "$WORK_DIR/mpi/mpi_hello" "$REPO_ROOT/tests/e2e/slurm/mpi_hello.c"
mpi_job=$(sbatch --parsable --ntasks=4 --output="$WORK_DIR/mpi/%j.out" \
  --wrap "srun --mpi=pmix $WORK_DIR/mpi/mpi_hello")
wait_for 30 "MPI job $mpi_job to complete" job_is "$mpi_job" COMPLETED
mpi_out=$WORK_DIR/mpi/$mpi_job.out
for rank in 0 1 2 3; do
  file_has "$mpi_out" "mpi_hello rank $rank of 4 on .*: rank sum 6 (ok)" ||
    fail "rank $rank did not report: $(cat "$mpi_out")"
done

say "job array of 3 tasks, one file each"
mkdir -p "$WORK_DIR/array"
array_job=$(sbatch --parsable --array=0-2 --ntasks=1 --output="$WORK_DIR/array/%A_%a.out" \
  --wrap "echo \"task \$SLURM_ARRAY_TASK_ID of job \$SLURM_ARRAY_JOB_ID\" > $WORK_DIR/array/task-\$SLURM_ARRAY_TASK_ID.txt")
wait_for 30 "array $array_job to complete" job_is "$array_job" COMPLETED
for task in 0 1 2; do
  file_has "$WORK_DIR/array/task-$task.txt" "task $task of job $array_job" ||
    fail "array task $task wrote no file"
done
[ "$(find "$WORK_DIR/array" -name 'task-*.txt' | wc -l)" = 3 ] || fail "array wrote extra files"

say "scancel --signal=USR1 --batch reaches the script's trap"
mkdir -p "$WORK_DIR/signal"
cat >"$WORK_DIR/signal/trap-usr1.sbatch" <<EOF
#!/usr/bin/env bash
trap 'echo "USR1 trapped" > $WORK_DIR/signal/trapped.txt; exit 0' USR1
echo ready > $WORK_DIR/signal/ready.txt
while :; do sleep 0.2 & wait \$! || true; done
EOF
signal_job=$(sbatch --parsable --ntasks=1 --output="$WORK_DIR/signal/%j.out" \
  "$WORK_DIR/signal/trap-usr1.sbatch")
wait_for 30 "signal job $signal_job to start" test -s "$WORK_DIR/signal/ready.txt"
scancel --signal=USR1 --batch "$signal_job"
wait_for 15 "the USR1 trap to fire" file_has "$WORK_DIR/signal/trapped.txt" "USR1 trapped"
wait_for 15 "signal job $signal_job to complete" job_is "$signal_job" COMPLETED

say "scontrol requeue restarts the job with SLURM_RESTART_COUNT=1 (after cred_expire)"
mkdir -p "$WORK_DIR/requeue"
requeue_job=$(sbatch --parsable --ntasks=1 --requeue --open-mode=append \
  --output="$WORK_DIR/requeue/%j.out" \
  --wrap "echo restart=\${SLURM_RESTART_COUNT:-0} >> $WORK_DIR/requeue/restarts.txt; sleep 300")
wait_for 30 "requeue job $requeue_job to start" file_has "$WORK_DIR/requeue/restarts.txt" restart=0
scontrol requeue "$requeue_job"
wait_for 45 "requeued job $requeue_job to run again" \
  file_has "$WORK_DIR/requeue/restarts.txt" restart=1
grep -q 'Restarts=1' <<<"$(scontrol show job "$requeue_job")" || fail "scontrol shows no Restarts=1"
scancel "$requeue_job"
wait_for 20 "requeue job $requeue_job to end" job_is "$requeue_job" CANCELLED

say "slurm/alem-convert.sbatch: the real alem convert, under a temporary name, then renamed"
mkdir -p "$WORK_DIR/convert"
convert_job=$(ALEM_BIN=$ALEM ALEM_CONVERT_INPUT="$GGUF" ALEM_CONVERT_DTYPE=int8 \
  ALEM_CONVERT_OUTPUT="$WORK_DIR/convert/out/model.h5" sbatch --parsable --partition=debug \
  --time=10 --cpus-per-task=1 --mem=2G --output="$WORK_DIR/convert/%j.out" \
  "$REPO_ROOT/slurm/alem-convert.sbatch")
wait_for 150 "convert job $convert_job to complete" job_is "$convert_job" COMPLETED
"$ALEM" convert --verify "$WORK_DIR/convert/out/model.h5" >/dev/null ||
  fail "the converted store does not verify"
grep -q '"num_layers":30' <<<"$("$ALEM" info "$WORK_DIR/convert/out/model.h5")" ||
  fail "the converted store is not SmolLM2-135M"
[ -z "$(find "$WORK_DIR/convert/out" -name '*partial*')" ] || fail "partial file left behind"

slurm_test_teardown
say "all checks passed"
