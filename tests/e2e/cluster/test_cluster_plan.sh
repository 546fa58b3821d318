#!/usr/bin/env bash
# test_cluster_plan.sh: the planner checked on the 4-host namespace cluster of
# slurm/local/cluster-local.sh, as docs/planner.md's cluster table is measured:
#   1. calibration inside the cluster: `alem bench calibrate -m` on one host, then
#      `--collectives-only` as an srun step over 2 hosts: the link fit is recorded as the link
#      between hosts (so `alem plan` uses it for links.inter_node);
#   2. scripts/plan_check.py --launcher srun: `alem bench batch` as srun steps with one rank per
#      host, tp 3 across 3 hosts, pp 2 across 2, dp 2 across 2, each predicted by `alem plan
#      --layout` with plan/clusters/netns-4host.toml and the calibration updated right before it;
#   3. the same with every host's link shaped to 100 Mbit/s (tbf; this kernel has no netem), one
#      run.
# Asserts that every run was measured and predicted, never a speed (the accuracy on this shared
# machine is reported in docs/planner.md). Needs root, network namespaces, Slurm, munge, PMIx,
# Open MPI, the alem binary and the model store; exits 77 (ctest: skipped) without them.
set -euo pipefail

readonly TEST_NAME=cluster-plan
readonly TEST_DEADLINE_S=${ALEM_CLUSTER_TEST_DEADLINE_S:-580}
# shellcheck source=tests/e2e/cluster/cluster_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster_test_lib.sh"
cluster_test_requirements
cluster_test_start
readonly CLUSTER_TOML=$REPO_ROOT/plan/clusters/netns-4host.toml
readonly CAL=$WORK_DIR/calibration.json

say "1. calibration: the engine on one host, collectives between two"
timeout 300 srun -N 1 -n 1 --mpi=none "$ALEM" bench calibrate -m "$MODEL" --dtypes bf16 \
  --seconds 0.05 --repeats 1 -o "$CAL" >"$WORK_DIR/calibrate.txt" 2>&1 ||
  fail "alem bench calibrate -m: $(tail -5 "$WORK_DIR/calibrate.txt")"
for attempt in $(seq "$START_ATTEMPTS"); do
  if timeout 120 srun --kill-on-bad-exit=1 --mpi=pmix -N 2 -n 2 --ntasks-per-node=1 \
    "$ALEM" bench calibrate --collectives-only -m "$MODEL" -o "$CAL" >"$WORK_DIR/collectives.txt" 2>&1; then break; fi
  if [ "$attempt" -eq "$START_ATTEMPTS" ] || ! startup_crash "$WORK_DIR/collectives.txt"; then
    fail "collectives between hosts: $(tail -5 "$WORK_DIR/collectives.txt")"
  fi
  say "Open MPI crashed in MPI_Init (known start-up race); launching again"
done
fit=$(grep 'link fit' "$WORK_DIR/collectives.txt") || fail "no link fit: $(cat "$WORK_DIR/collectives.txt")"
grep -q 'between hosts' <<<"$fit" || fail "ranks on two hosts, but the fit says: $fit"
python3 - "$CAL" <<'PY' || fail "the calibration file does not record the fit as between nodes"
import json, sys
c = json.load(open(sys.argv[1]))
assert c["link_fit"]["between_nodes"] is True and c["link_fit"]["bandwidth_gbs"] > 0, c["link_fit"]
PY
say "   $fit"

# plan_check RUNS LABEL: every run measured and predicted, the summary line printed.
plan_check() {
  local runs=$1 label=$2 n
  n=$(tr ';' '\n' <<<"$runs" | grep -c .)
  python3 "$REPO_ROOT/scripts/plan_check.py" --alem "$ALEM" --model "$MODEL" \
    --cluster "$CLUSTER_TOML" --calibration "$CAL" --launcher srun --runs "$runs" \
    --max-tokens 8 --requests-per-slot 1 --timeout 180 --label "$label" \
    --csv "$WORK_DIR/check-$label.csv" >"$WORK_DIR/check-$label.txt" 2>"$WORK_DIR/check-$label.err" ||
    fail "plan_check ($label): $(tail -5 "$WORK_DIR/check-$label.err")"
  cat "$WORK_DIR/check-$label.txt"
  grep -Eq "^tok_s: median \|error\| [0-9]+%, worst [0-9]+% over $n runs" "$WORK_DIR/check-$label.txt" ||
    fail "plan_check ($label) did not measure and predict all $n runs"
  python3 - "$WORK_DIR/check-$label.csv" "$n" <<'PY' || fail "plan_check ($label): a run without figures"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == int(sys.argv[2]), rows
for r in rows:
    for w in ("tok_s", "ttft_s", "itl_s"):
        assert float(r[f"measured_{w}"]) > 0 and float(r[f"predicted_{w}"]) > 0, r
PY
}

say "2. tp 3 across 3 hosts, pp 2 across 2, dp 2 across 2: measured and predicted"
plan_check "3,1,1,2;1,2,1,2;1,1,2,2" clear

say "3. every host's link shaped to 100 Mbit/s (tbf): tp 3 across 3 hosts"
for k in 1 2 3 4; do "$CLUSTER" shape "$k" --rate 100mbit 2>/dev/null; done
grep -q 'tbf' <<<"$("$CLUSTER" status)" || fail "the links are not shaped: $("$CLUSTER" status)"
plan_check "3,1,1,2" tbf-100mbit

say "all checks passed"
