#!/usr/bin/env bash
# test_slurm_serve.sh: the shipped slurm/alem-serve.sbatch and slurm/alem-sweep.sbatch with the
# real alem and the real model, on the one-node cluster of slurm/local/slurm-local.sh:
#   1. sbatch the serve job with 4 tasks (tp 1 x pp 4), wait for /health, check answers over
#      HTTP against `alem generate`, `alem status --job` and the job's metrics; sealed requests
#      through the network simulator (`alem netsim`), which the job dials as its provider:
#      every answer opens and is complete, lost = 0, billed twice = 0;
#   2. `scancel --signal=USR1 --batch`: the job drains, the request in flight completes, the
#      script requeues it; it comes back (restart 1) and serves again;
#   3. SIGKILL one rank: the whole job ends non-zero within 30 s (and is not requeued);
#   4. a sweep array of 2 tasks writes one `alem bench batch` result per task, merged into one
#      HDF5 results file (sweep.h5 + sweep.csv) holding both runs; merging again adds nothing,
#      and a result of another model is refused.
# Talks to 127.0.0.1 only. Needs root, Slurm, munge, PMIx, Open MPI, curl, python3, the alem
# binary and the model store; exits 77 (ctest: skipped) without them. Stops itself after
# TEST_DEADLINE_S and always tears the cluster down.
set -euo pipefail

readonly TEST_NAME=slurm-serve
readonly TEST_DEADLINE_S=${ALEM_SLURM_TEST_DEADLINE_S:-540}
# shellcheck source=tests/e2e/slurm/slurm_test_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_test_lib.sh"

require_tools slurmctld slurmd munged mungekey sbatch srun scontrol ss curl python3
ALEM=$(realpath -m "${ALEM_BINARY:-$REPO_ROOT/build/alem}")
readonly ALEM
MODEL=$(realpath -m "${ALEM_TEST_MODEL:-$REPO_ROOT/models/smollm2-135m-instruct.h5}")
readonly MODEL
[ -x "$ALEM" ] || { echo "skipped: no alem binary at $ALEM"; exit "$SKIP"; }
[ -s "$MODEL" ] || { echo "skipped: no model store at $MODEL (scripts/prepare-model.sh)"; exit "$SKIP"; }
export OMP_NUM_THREADS=1 ALEM_LOG_FORMAT=json

# json_field FILE EXPR: a value from a JSON document (EXPR indexes `d`, e.g. d["a"][0]).

slurm_test_start
PORT=$(pick_ports) || fail "no free port for the gateway"
readonly PORT BASE=http://127.0.0.1:$PORT
readonly PROMPT="The capital of France is"

say "expected answer from alem generate (one rank, same store)"
expected=$("$ALEM" generate --model "$MODEL" --prompt "$PROMPT" --max-tokens 8 --temperature 0 --quiet)

# complete FILE: a greedy /v1/completions answer for PROMPT, saved as FILE.
complete() {
  curl -sS --max-time 120 -o "$1" -w '%{http_code}' "$BASE/v1/completions" \
    -H 'Content-Type: application/json' \
    -d "{\"model\":\"SmolLM2-135M-Instruct\",\"prompt\":\"$PROMPT\",\"max_tokens\":8,\"temperature\":0}"
}
healthy() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/health")" = 200 ]; }
check_answer() {
  local code
  code=$(complete "$WORK_DIR/serve/answer-$1.json")
  [ "$code" = 200 ] || fail "completion answered HTTP $code: $(cat "$WORK_DIR/serve/answer-$1.json")"
  local got
  got=$(json_field "$WORK_DIR/serve/answer-$1.json" 'd["choices"][0]["text"]')
  [ "$got" = "$expected" ] || fail "the job answered '$got', alem generate '$expected'"
}
# status_has RESTARTS: `alem status --job` from the job's folder shows a ready 4-rank job.
status_has() {
  local out
  out=$(cd "$WORK_DIR/serve" && "$ALEM" status --job "$serve_job") || fail "alem status failed: $out"
  grep -q "restarts $1" <<<"$out" || fail "alem status shows no 'restarts $1': $out"
  grep -q "tp 1 x pp 4 x dp 1 = 4 ranks" <<<"$out" || fail "alem status shows another layout: $out"
  grep -q "^state       ready" <<<"$out" || fail "alem status: not ready: $out"
}

mkdir -p "$WORK_DIR/serve"
cat >"$WORK_DIR/serve/server.toml" <<TOML
[network]
host = "127.0.0.1"
port = $PORT
queue = ""

[limits]
max_batch_tokens = 256
max_concurrent_requests = 8
max_context_tokens = 512
drain_seconds = 90
TOML
local_site=(--partition=debug --time=15 --gpus-per-node=0 --cpus-per-task=1)

say "alem netsim: the reference network the job will dial out to"
"$ALEM" netsim --listen 127.0.0.1:0 --insecure --accept-software-evidence --requests 4 \
  --concurrency 2 --max-tokens 8 --report "$WORK_DIR/serve/netsim-report.json" \
  --wait-provider-s 200 --run-s 200 >"$WORK_DIR/serve/netsim.log" 2>&1 &
netsim_pid=$!
netsim_port() { python3 - "$WORK_DIR/serve/netsim.log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("{"):
        e = json.loads(line)
        if e.get("msg") == "listening":
            print(e["port"]); sys.exit(0)
sys.exit(1)
PY
}
wait_for 30 "alem netsim to listen" netsim_port
NETSIM_PORT=$(netsim_port)

say "slurm/alem-serve.sbatch: 4 ranks (tp 1 x pp 4) of the real alem serve"
serve_job=$(ALEM_BIN=$ALEM ALEM_MODEL=$MODEL ALEM_TP=1 ALEM_PP=4 ALEM_DP=1 ALEM_PORT=$PORT \
  ALEM_SERVER_CONFIG=$WORK_DIR/serve/server.toml \
  ALEM_SERVE_EXTRA_ARGS="--kv-cache-mb 32 --network-endpoint 127.0.0.1:$NETSIM_PORT --network-insecure --attestation off --provider-key $WORK_DIR/serve/provider.key --usage-journal $WORK_DIR/serve/usage.journal" \
  sbatch --parsable "${local_site[@]}" --nodes=1 --ntasks-per-node=4 \
  --chdir="$WORK_DIR/serve" --output="$WORK_DIR/serve/%j.out" "$REPO_ROOT/slurm/alem-serve.sbatch")
serve_log=$WORK_DIR/serve/$serve_job.out
wait_for 180 "serve job $serve_job to answer /health" healthy
say "healthy; checking answers, status and metrics"
check_answer first
status_has 0
metrics=$(curl -s "$BASE/metrics")
grep -q "^alem_job_restarts 0" <<<"$metrics" || fail "metrics lack alem_job_restarts 0"
grep -q "^alem_job_info{job_id=\"$serve_job\"" <<<"$metrics" || fail "metrics lack alem_job_info"
# Structured logs: every JSON line names its rank and host.
python3 - "$serve_log" <<'PY' || fail "a JSON log line lacks rank or host"
import json, sys
lines = [l for l in open(sys.argv[1], errors="replace") if l.startswith("{")]
assert lines, "no JSON log lines"
for l in lines:
    e = json.loads(l)
    assert "rank" in e and "host" in e, l
PY

say "sealed requests through the network simulator"
wait "$netsim_pid" || fail "alem netsim reported a problem: $(tail -5 "$WORK_DIR/serve/netsim.log")"
for field in lost billed_twice failed; do
  [ "$(json_field "$WORK_DIR/serve/netsim-report.json" "d['$field']")" = 0 ] ||
    fail "netsim report: $field is not 0: $(cat "$WORK_DIR/serve/netsim-report.json")"
done
[ "$(json_field "$WORK_DIR/serve/netsim-report.json" "d['completed']")" = 4 ] ||
  fail "netsim report: not 4 completed: $(cat "$WORK_DIR/serve/netsim-report.json")"

say "scancel --signal=USR1 --batch: drain with a request in flight, then requeue"
curl -sS -N --max-time 240 "$BASE/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model":"SmolLM2-135M-Instruct","prompt":"Count to fifty:","max_tokens":24,"ignore_eos":true,"temperature":0,"stream":true}' \
  >"$WORK_DIR/serve/in-flight.txt" 2>&1 &
stream_pid=$!
running() { curl -s "$BASE/metrics" | grep '^alem_requests_running{replica="0"[^}]*} [1-9]' >/dev/null; }
wait_for 60 "the streaming request to run" running
scancel --signal=USR1 --batch "$serve_job"
wait "$stream_pid" || fail "the in-flight stream failed: $(tail -c 400 "$WORK_DIR/serve/in-flight.txt")"
grep -q '"finish_reason":"length"' "$WORK_DIR/serve/in-flight.txt" ||
  fail "the in-flight request did not finish normally: $(tail -c 400 "$WORK_DIR/serve/in-flight.txt")"
grep -q 'data: \[DONE\]' "$WORK_DIR/serve/in-flight.txt" || fail "the stream did not end with [DONE]"
wait_for 60 "the job to drain and requeue" file_has "$serve_log" "drained (exit 75): requeueing"
wait_for 200 "serve job $serve_job to come back after the requeue" healthy
check_answer second
status_has 1
file_has "$serve_log" '"SLURM_RESTART_COUNT":"1"' || fail "the restart count is not in the log"

say "SIGKILL one rank: the job ends non-zero within 30 s"
# slurmstepd knows each task's pid and global rank (`scontrol listpids`: PID JOBID STEPID
# LOCALID GLOBALID); the environment of a rank is a second way, as alem makes itself
# non-dumpable and /proc/PID/environ then needs CAP_SYS_PTRACE. No `grep -q` after a pipe
# here: under pipefail the writer dies of SIGPIPE when grep stops early, a false "no match".
victim=""
find_rank2() {
  local pid
  for pid in $(scontrol listpids "$serve_job" 2>/dev/null | awk '$5 == 2 { print $1 }'); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -- "$ALEM serve" >/dev/null && victim=$pid
  done
  [ -n "$victim" ] && return 0
  for pid in $(pgrep -f -- "$ALEM serve"); do
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -x "SLURM_PROCID=2" >/dev/null && victim=$pid
  done
  [ -n "$victim" ]
}
for _ in $(seq 100); do find_rank2 && break; sleep 0.2; done
if [ -z "$victim" ]; then
  scontrol listpids "$serve_job" >&2 || true
  ps -eo pid,ppid,args | grep -F -- "$ALEM" | grep -v grep >&2 || true
  fail "no process of rank 2 found"
fi
say "rank 2 is pid $victim"
kill -KILL "$victim"
killed_at=$(date +%s)
wait_for 30 "the job to end after a rank died" job_ended "$serve_job"
say "job ended $(($(date +%s) - killed_at)) s after the kill: $(job_state "$serve_job")"
exit_code=$(scontrol show job -o "$serve_job" | grep -o ' ExitCode=[0-9:]*' | cut -d= -f2)
[ "$exit_code" != "0:0" ] || fail "the job ended with exit code 0 after a rank died"
job_is "$serve_job" FAILED || fail "job state $(job_state "$serve_job"), expected FAILED"

say "slurm/alem-sweep.sbatch: 2 array tasks of alem bench batch, one result each, one HDF5 file"
mkdir -p "$WORK_DIR/sweep"
sweep_job=$(ALEM_BIN=$ALEM ALEM_MODEL=$MODEL ALEM_SWEEP_OUTPUT="$WORK_DIR/sweep/results" \
  ALEM_SWEEP_CONFIGS="1 1 4 4;1 2 4 4" ALEM_SWEEP_REQUESTS=4 ALEM_SWEEP_PROMPT_TOKENS=16 \
  ALEM_SWEEP_MAX_TOKENS=8 sbatch --parsable "${local_site[@]}" --array=0-1 --nodes=1 \
  --ntasks-per-node=2 --chdir="$WORK_DIR/sweep" --output="$WORK_DIR/sweep/%A_%a.out" \
  "$REPO_ROOT/slurm/alem-sweep.sbatch")
wait_for 180 "sweep array $sweep_job to complete" job_is "$sweep_job" COMPLETED
for pp in 1 2; do
  result=$WORK_DIR/sweep/results/tp1-pp$pp-batch4-conc4.json
  [ -s "$result" ] || fail "sweep result for pp $pp missing"
  [ "$(json_field "$result" 'd["layout"]["pp"]')" = "$pp" ] || fail "$result: wrong layout"
  [ "$(json_field "$result" 'int(d["generated_tokens"])')" = 32 ] ||
    fail "$result: expected 4 requests x 8 tokens"
done
[ "$(find "$WORK_DIR/sweep/results" -name '*.json' | wc -l)" = 2 ] || fail "extra sweep results"
say "the array's results in one HDF5 file"
results=$WORK_DIR/sweep/results
[ -s "$results/sweep.h5" ] || fail "the array left no merged sweep.h5: $(ls "$results")"
python3 - "$results/sweep.csv" <<'PY' || fail "sweep.csv does not hold both runs: $(cat "$results/sweep.csv")"
import csv, sys
rows = {r["run"]: r for r in csv.DictReader(open(sys.argv[1]))}
assert sorted(rows) == ["tp1-pp1-dp1-b4-c4", "tp1-pp2-dp1-b4-c4"], sorted(rows)
for key, r in rows.items():
    assert r["pp"] == key[6] and r["requests"] == "4", r
    assert float(next(v for k, v in r.items() if k.startswith("tokens_per_s"))) > 0, r
PY
again=$("$ALEM" bench sweep --model "$MODEL" --merge "$results"/*.json --output "$results/sweep.h5")
grep -q "0 run(s) added, 2 already there" <<<"$again" || fail "merging again: $again"
python3 - "$results/tp1-pp1-batch4-conc4.json" "$WORK_DIR/sweep/other-model.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["model_digest"] = "0" * 64
d["layout"]["pp"] = 3
json.dump(d, open(sys.argv[2], "w"))
PY
if refused=$("$ALEM" bench sweep --merge "$WORK_DIR/sweep/other-model.json" --output "$results/sweep.h5" 2>&1); then
  fail "a result of another model was merged: $refused"
fi
grep -q "another model" <<<"$refused" || fail "refusal does not say why: $refused"
[ "$(grep -c '^tp' "$results/sweep.csv")" = 2 ] || fail "sweep.csv changed after a refused merge"

slurm_test_teardown
say "all checks passed"
