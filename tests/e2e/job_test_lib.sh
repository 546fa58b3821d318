#!/usr/bin/env bash
# job_test_lib.sh: the shell helpers every end-to-end test of Slurm jobs shares (the one-node
# tests in slurm/ and the multi-host tests in cluster/ source it through their own libraries):
# progress lines with the time since start, failing, polling, job states and a deadline watchdog.
#
# The sourcing script sets TEST_NAME and TEST_DEADLINE_S.

readonly SKIP=77
TEST_START_MS=$(($(date +%s%N) / 1000000))
readonly TEST_START_MS

elapsed() {
  local ms=$(($(date +%s%N) / 1000000 - TEST_START_MS))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
say() { printf '[%s %6ss] %s\n' "$TEST_NAME" "$(elapsed)" "$*"; }
fail() {
  say "FAIL: $*"
  exit 1
}
now_s() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds, or fails the test.
wait_for() {
  local seconds=$1 what=$2
  local deadline=$(($(date +%s) + seconds))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then fail "timed out after ${seconds}s waiting for: $what"; fi
    sleep 0.2
  done
}
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sort -u; }
job_is() { [ "$(job_state "$1")" = "$2" ]; }
job_ended() { case "$(job_state "$1")" in FAILED | COMPLETED | CANCELLED | NODE_FAIL | TIMEOUT) return 0 ;; *) return 1 ;; esac; }
file_has() { grep -q -- "$2" "$1" 2>/dev/null; }
count_lines() { grep -c -- "$2" "$1" 2>/dev/null || true; }
json_field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# start_watchdog: after TEST_DEADLINE_S seconds the test gets SIGTERM (its trap fails it); the
# watchdog's own sleep goes with it. Sets watchdog_pid, which the cleanup kills.
start_watchdog() {
  (
    trap 'kill "$deadline_sleep" 2>/dev/null; exit 0' TERM
    sleep "$TEST_DEADLINE_S" &
    deadline_sleep=$!
    wait "$deadline_sleep"
    kill -TERM "$$" 2>/dev/null
  ) &
  watchdog_pid=$!
}
