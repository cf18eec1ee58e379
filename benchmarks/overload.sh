#!/usr/bin/env bash
# The load-adaptive granularity ceiling under overload (issue 10, docs/benchmarks.md "Overload"):
#
#   benchmarks/overload.sh
#
# Runs the same open-loop overload twice against `grain serve` on the small AVG checkpoint — the
# controller off, then on — and prints goodput, p90 TTFT against the target, visual tokens per
# request and the recovery time of the ceiling once load stops (benchmarks/overload.py).
# Each phase:
#   1. `auto` traffic (the server default) at RATE requests/s for DURATION seconds, plus a thin
#      stream of explicit `detail: high` requests that must keep 576;
#   2. load stops; /metrics is polled every 0.5 s until grain_granularity_ceiling is back at 576.
# Knobs (environment): RATE, DURATION, TARGET_MS, STEP_DOWN_MS, STEP_UP_MS, COOLDOWN_MS, MAX_TOKENS,
# TIMEOUT, IMAGE, GRAIN_BIN, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

GRAIN=${GRAIN_BIN:-target/release/grain}
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-target/bench-work}
RATE=${RATE:-0.4}
DURATION=${DURATION:-120}
TARGET_MS=${TARGET_MS:-4000}
MAX_TOKENS=${MAX_TOKENS:-16}
TIMEOUT=${TIMEOUT:-60}
IMAGE=${IMAGE:-672x672}
STEP_UP_MS=${STEP_UP_MS:-5000}
STEP_DOWN_MS=${STEP_DOWN_MS:-1000}
COOLDOWN_MS=${COOLDOWN_MS:-2000}
PORT=${PORT:-18431}

if [[ -z ${GRAIN_BIN:-} && ! -x $GRAIN ]]; then cargo build --release -p grain; fi
mkdir -p "$OUT" "$WORK"
ckpt="$WORK/small-avg"
[[ -f $ckpt/config.json ]] || "$GRAIN" make-tiny --layout avg --size small --out "$ckpt" >&2

server_pid=
stop_server() { [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; server_pid=; }
trap stop_server EXIT

ceiling() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '$1 == "grain_granularity_ceiling" {print $2}'; }

phase() { # $1 = off|on
  local mode=$1 url="http://127.0.0.1:$PORT"
  "$GRAIN" serve --model "$ckpt" --port "$PORT" --default-granularity auto \
    --controller="$([[ $mode == on ]] && echo true || echo false)" \
    --controller-target-ms "$TARGET_MS" --controller-step-up-after-ms "$STEP_UP_MS" \
    --controller-step-down-after-ms "$STEP_DOWN_MS" \
    --controller-cooldown-ms "$COOLDOWN_MS" >"$WORK/overload-$mode.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do curl -fsS "$url/ready" >/dev/null 2>&1 && break; sleep 0.5; done
  local trace="$OUT/overload-$mode-ceiling.tsv"
  : >"$trace"
  ( while kill -0 "$server_pid" 2>/dev/null; do
      printf '%s\t%s\n' "$(date +%s.%N)" "$(ceiling || echo nan)" >>"$trace"; sleep 0.5
    done ) &
  local poller=$!
  date +%s.%N >"$OUT/overload-$mode-start"
  local common=(--url "$url" --quiet --warmup 0 --duration "$DURATION" --timeout "$TIMEOUT"
    --max-tokens "$MAX_TOKENS" --image-sizes "$IMAGE" --seed 7)
  "$GRAIN" bench "${common[@]}" --granularity high --rate 0.05 --label "detail high ($mode)" \
    --json "$OUT/overload-$mode-high.json" &
  local high=$!
  "$GRAIN" bench "${common[@]}" --granularity default --rate "$RATE" --label "controller $mode" \
    --json "$OUT/overload-$mode.json"
  wait "$high"
  date +%s.%N >"$OUT/overload-$mode-load-end"
  # Recovery: no traffic; wait for the ceiling to come back to the top (bounded).
  for _ in $(seq 240); do [[ $(ceiling) == 576 ]] && break; sleep 0.5; done
  sleep 1
  kill "$poller" 2>/dev/null || true
  stop_server
}

phase off
phase on
python3 benchmarks/overload.py --out "$OUT" --target-ms "$TARGET_MS" \
  --step-up-ms "$STEP_UP_MS" --cooldown-ms "$COOLDOWN_MS"
