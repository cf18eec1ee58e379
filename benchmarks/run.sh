#!/usr/bin/env bash
# Reproduce one table of docs/benchmarks.md with one command:
#
#   benchmarks/run.sh granularity   # fixed 36 … 576, router, paper-like mix at concurrency 16 (+ solo)
#   benchmarks/run.sh batching      # tokens/s at concurrency 1, 4, 16: text-only (medium and small), images at 36
#   benchmarks/run.sh hf            # Grain vs HF transformers, same HF-layout checkpoint and requests
#   benchmarks/run.sh hf-text       # the same on text-only requests (decoding dominates)
#   benchmarks/run.sh prefix        # prefix caching on vs off at concurrency 8, text-only requests;
#                                   # image chats' second turns (cache on/off, router memo on/off)
#   benchmarks/run.sh all
#
# Uses target/release/grain (built if missing; GRAIN_BIN overrides), writes checkpoints under
# target/bench-work/ and raw JSON + SVG plots under benchmarks/results/ (OUT overrides). Each table's
# requests are seeded, so reruns send the same prompts, image sizes and output lengths. The `hf`
# table needs the parity venv (.venv-parity: torch + transformers, see tests/parity/README.md).
# Environment knobs: N (requests per run point), HF_N (requests in the HF table), MAX_TOKENS.
# Exit status 1 when a table misses its target (benchmarks/summarize.py prints which).
set -euo pipefail
cd "$(dirname "$0")/.."

GRAIN=${GRAIN_BIN:-target/release/grain}
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-target/bench-work}
N=${N:-32}
HF_N=${HF_N:-32}
MAX_TOKENS=${MAX_TOKENS:-64}
PY=${PY:-.venv-parity/bin/python}

if [[ -z ${GRAIN_BIN:-} && ! -x $GRAIN ]]; then
  cargo build --release -p grain
fi
mkdir -p "$OUT" "$WORK"

# The small preset (LM hidden 512 × 4 layers, CLIP 256 wide × 4 layers), random but seeded weights;
# `checkpoint avg medium`: the LM 1024 wide × 8 layers (377 MB, far more than the CPU's caches).
checkpoint() {
  local size=${2:-small}
  local dir="$WORK/$size-$1"
  [[ -f $dir/config.json ]] || "$GRAIN" make-tiny --layout "$1" --size "$size" --out "$dir" >&2
  echo "$dir"
}

# `grain serve --port $SERVE_PORT` with the given arguments in the background, its output in the
# file named first; returns once it is ready. `stop_server` ends it.
SERVE_PORT=18391
start_server() {
  local log=$1
  shift
  "$GRAIN" serve --port "$SERVE_PORT" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  until curl -sf "http://127.0.0.1:$SERVE_PORT/ready" >/dev/null; do sleep 0.5; done
}
stop_server() {
  kill "$SERVER_PID"
  wait "$SERVER_PID" || true
}

# Common settings: the realistic spread of photo sizes, one image per request, greedy, MAX_TOKENS.
# Prefix caching is off in the tables that compare run points or servers: each point replays the
# same prompts, which a cache would serve from the points before; table `prefix` measures it.
NO_PREFIX_CACHE=--spawn-arg=--prefix-caching=false
bench() {
  "$GRAIN" bench --spawn "$GRAIN" --max-tokens "$MAX_TOKENS" --seed 1 "$@"
}

granularity() {
  bench --spawn-model "$(checkpoint avg)" --label "grain small (AVG)" \
    --granularity 36,72,144,288,576,auto,mix:paper --concurrency 1,16 --num-requests "$N" --warmup 2 \
    --json "$OUT/granularity.json" --plot "$OUT/plots-granularity"
  python3 benchmarks/summarize.py granularity "$OUT/granularity.json"
}

# Three runs: text-only requests (decoding dominates: what batching speeds up) on the medium
# preset, 128 tokens each (vLLM's serving benchmark's default output length), whose weights stream
# from memory at every step as a real model's do; the same on the small preset at 64 tokens, whose
# 48 MB of weights largely stay in the L3 (a batch-1 step is unusually cheap there); and one image
# per request at granularity 36 on the small preset (the vision tower dominates).
batching() {
  local ok=0
  MAX_TOKENS=128 bench --spawn-model "$(checkpoint avg medium)" --label "grain medium, text only, 128 tokens" \
    "$NO_PREFIX_CACHE" --workload text --concurrency 1,4,16 --num-requests "$N" --warmup 2 \
    --json "$OUT/batching-medium-text.json" --plot "$OUT/plots-batching-medium-text"
  python3 benchmarks/summarize.py batching "$OUT/batching-medium-text.json" || ok=1
  bench --spawn-model "$(checkpoint avg)" --label "grain small, text only" "$NO_PREFIX_CACHE" \
    --workload text --concurrency 1,4,16 --num-requests "$N" --warmup 2 \
    --json "$OUT/batching-text.json" --plot "$OUT/plots-batching-text"
  python3 benchmarks/summarize.py batching "$OUT/batching-text.json" || ok=1
  bench --spawn-model "$(checkpoint avg)" --label "grain small, image at 36" \
    --granularity 36 --concurrency 1,4,16 --num-requests "$N" --warmup 2 \
    --json "$OUT/batching-image.json" --plot "$OUT/plots-batching-image"
  python3 benchmarks/summarize.py batching "$OUT/batching-image.json" || ok=1
  return $ok
}

# Grain and transformers on the same HF-layout checkpoint and the same dumped requests.
# Arguments: the results' file prefix, a label suffix, then `grain bench` workload flags.
hf_compare() {
  local prefix=$1 suffix=$2 ckpt
  shift 2
  ckpt=$(checkpoint hf)
  "$GRAIN" bench "$@" --dump-workload "$WORK/$prefix-workload.jsonl" \
    --num-requests "$HF_N" --max-tokens "$MAX_TOKENS" --seed 1
  "$GRAIN" bench --spawn "$GRAIN" --spawn-model "$ckpt" --label "grain small (HF layout)$suffix" "$NO_PREFIX_CACHE" \
    --dataset "$WORK/$prefix-workload.jsonl" --concurrency 1,8 --num-requests "$HF_N" --warmup 1 \
    --json "$OUT/$prefix-grain.json"
  "$PY" benchmarks/hf_baseline.py --model "$ckpt" --dataset "$WORK/$prefix-workload.jsonl" \
    --batch-sizes 1,8 --json "$OUT/$prefix-transformers.json"
  python3 benchmarks/summarize.py hf "$OUT/$prefix-grain.json" "$OUT/$prefix-transformers.json"
}

# One image per request. The HF layout has no router: Grain serves every image at 576, the
# granularity transformers uses.
hf() { hf_compare hf ""; }

# Text-only requests (no image, no vision tower): decoding dominates, the part of the work that
# continuous batching speeds up.
hf_text() { hf_compare hf-text ", text" --workload text; }

# Prefix caching on and off, each on a fresh server: 32 distinct text requests at concurrency 8 that
# share only the chat template's system prompt (36 tokens: two full 16-token blocks).
prefix() {
  local pc
  for pc in true false; do
    bench --spawn-model "$(checkpoint hf)" --label "grain small, prefix caching $pc" \
      --spawn-arg=--prefix-caching=$pc --workload text --concurrency 8 --num-requests "$N" --warmup 1 \
      --json "$OUT/prefix-$pc.json"
  done
  python3 benchmarks/summarize.py prefix "$OUT/prefix-true.json" "$OUT/prefix-false.json"
  # The second turn of image chats (the image and the first turn are the cached prefix).
  local url=http://127.0.0.1:$SERVE_PORT model memo
  model=$(checkpoint avg)
  for pc in true false; do
    start_server "$WORK/multiturn-$pc.log" --model "$model" --prefix-caching=$pc
    echo "prefix caching $pc:"
    .venv-e2e/bin/python benchmarks/multiturn_image.py "$url" 4 | tee "$OUT/multiturn-$pc.txt"
    stop_server
  done
  # The same at granularity auto: the second turn's router, with the image's visual part kept and
  # without (GRAIN_ROUTER_MEMO=off).
  for memo in on off; do
    GRAIN_ROUTER_MEMO=$memo start_server "$WORK/multiturn-router-$memo.log" --model "$model"
    echo "router memo $memo:"
    .venv-e2e/bin/python benchmarks/multiturn_router.py "$url" 6 | tee "$OUT/multiturn-router-$memo.txt"
    stop_server
  done
}

case "${1:-}" in
  granularity) granularity ;;
  batching) batching ;;
  hf) hf ;;
  hf-text) hf_text ;;
  prefix) prefix ;;
  all)
    status=0
    granularity || status=1; batching || status=1; hf || status=1; hf_text || status=1
    prefix || status=1
    exit $status ;;
  *) echo "usage: $0 granularity|batching|hf|hf-text|prefix|all" >&2; exit 2 ;;
esac
