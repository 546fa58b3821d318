#!/usr/bin/env bash
# Sourced by the end-to-end scripts that start `alem serve --port 0` in the background with
# ALEM_LOG_FORMAT=json: waits until the server logged "ready" and reads the port from its
# "listening" line, failing early when the server process has exited.
#
#   port=$(listening_port LOG PID SECONDS "what") || exit 1
listening_port() {
  local log=$1 pid=$2 seconds=$3 what=$4 port=""
  for _ in $(seq 1 "$seconds"); do
    sleep 1
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "FAIL: $what exited" >&2
      tail -20 "$log" >&2
      return 1
    fi
    grep -q '"msg":"ready"' "$log" || continue
    port=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    if line.startswith("{") and json.loads(line).get("msg") == "listening":
        print(json.loads(line)["port"]); break' "$log")
    [ -n "$port" ] && break
  done
  if [ -z "$port" ]; then
    echo "FAIL: $what not ready after $seconds s" >&2
    tail -20 "$log" >&2
    return 1
  fi
  echo "$port"
}
