#!/usr/bin/env bash
# cluster_hops.sh: what communication between hosts costs, measured on the namespaced cluster of
# slurm/local/cluster-local.sh (which must be up; run as root):
#   1. alem_secure_channel_bench with one rank on each of two hosts: the pipeline activation hop
#      and the tensor-parallel all-reduce over TCP between hosts, clear and encrypted, on clear
#      links and on links shaped to RATE (default 1gbit) with LOSS percent loss (default 1);
#   2. alem bench generate with tp 1 x pp 4, one stage per host against all four on one host,
#      clear and shaped: tokens/s and the share of step time spent communicating.
# Usage: bench/cluster_hops.sh [OUT_DIR]   (ALEM_HOPS_RATE, ALEM_HOPS_LOSS, ALEM_HOPS_SECONDS)
# Figures depend on the machine: on one shared machine the "wire" is a veth pair, so bandwidth is
# memory bandwidth and the cores are shared by every host; read ratios, not absolutes.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=$REPO_ROOT/slurm/local/cluster-local.sh
OUT=${1:-cluster-hops-$(date +%Y%m%d-%H%M%S)}
RATE=${ALEM_HOPS_RATE:-1gbit}
LOSS=${ALEM_HOPS_LOSS:-1}
SECONDS_PER_SIZE=${ALEM_HOPS_SECONDS:-0.4}
ALEM=${ALEM_BINARY:-$REPO_ROOT/build/alem}
BENCH=${ALEM_SECURE_BENCH:-$REPO_ROOT/build/bench/alem_secure_channel_bench}
MODEL=${ALEM_TEST_MODEL:-$REPO_ROOT/models/smollm2-135m-instruct.h5}
eval "$("$CLUSTER" env)"
export OMP_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1
mkdir -p "$OUT"
mapfile -t HOSTS < <("$CLUSTER" nodes | cut -d' ' -f1)

run_step() { timeout 600 srun --kill-on-bad-exit=1 --mpi=pmix "$@"; }
shape_all() { for h in "${HOSTS[@]}"; do "$CLUSTER" shape "$h" --rate "$RATE" --loss "$LOSS" 2>/dev/null; done; }
heal_all() { for h in "${HOSTS[@]}"; do "$CLUSTER" heal "$h" 2>/dev/null; done; }
trap heal_all EXIT

generate() {
  run_step "$@" "$ALEM" bench generate -m "$MODEL" --tp 1 --pp 4 --threads 1 --prompt-tokens 64 \
    --decode-tokens 24 --repeats 2
}

for links in clear shaped; do
  if [ "$links" = shaped ]; then shape_all; fi
  echo "== channel bench, 2 hosts, $links links" | tee "$OUT/channel-$links.txt"
  run_step -N 2 --ntasks-per-node=1 "$BENCH" --seconds "$SECONDS_PER_SIZE" | tee -a "$OUT/channel-$links.txt"
  echo "== bench generate tp 1 x pp 4 over 4 hosts, $links links" | tee "$OUT/generate-4hosts-$links.txt"
  generate -N 4 --ntasks-per-node=1 | tee -a "$OUT/generate-4hosts-$links.txt"
  heal_all
done
echo "== bench generate tp 1 x pp 4 on one host" | tee "$OUT/generate-1host.txt"
generate -N 1 --ntasks-per-node=4 | tee -a "$OUT/generate-1host.txt"
echo "results in $OUT"
