#!/usr/bin/env bash
# RGLF end to end on the synthetic fine-vs-coarse task, on CPU (about 30 CPU-minutes):
#   1. a tiny AVG checkpoint (random weights, random router);
#   2. the synthetic question set, `solid` layout (fine: the colour of the solid cells among
#      two-tone ones, hidden from coarse pooling; coarse: the picture's dominant colour);
#   3. fine-tune its LM (projector frozen, so nothing undoes the pooling) at mixed granularities;
#   4. train the router with RGLF on other images, evaluate on held-out ones.
# Usage: [SERVE=1] [LAYOUT_ORDER=1] scripts/rglf-demo.sh [WORK_DIR]   (default: target/rglf-demo).
# Everything is seeded. LAYOUT_ORDER=1 uses the `order` layout instead (fine: the colour on the left
# of the cell pairs in the top four rows, hidden from every pooled view; see docs/rglf.md) and
# fine-tunes the LM twice as long (two runs of 6 epochs). SERVE=1 then serves the fine-tuned and
# the router-trained checkpoints in turn and prints the granularity mix each chose for the same 40
# fresh questions (from /metrics).
set -euo pipefail

cd "$(dirname "$0")/.."
WORK=${1:-target/rglf-demo}
# The dev profile builds dependencies (candle) at -O3, fast enough here and much quicker to build.
GRAIN=${GRAIN:-target/debug/grain}
if [[ ! -x $GRAIN ]]; then
  cargo build -p grain
fi
# The scene layout, for the training sets and for the fresh images of SERVE=1.
LAYOUT=(--fine-layout solid --solid-block 4)
LMM_RUNS=1
if [[ ${LAYOUT_ORDER:-0} == 1 ]]; then
  LAYOUT=(--fine-layout order --order-pairs 48)
  LMM_RUNS=2
fi
rm -rf "$WORK"
mkdir -p "$WORK"

"$GRAIN" make-tiny --layout avg --size tiny --seed 0 --out "$WORK/base"
"$GRAIN" make-rglf-data --out "$WORK/data" --lmm 500 --router 120 --router-pairs --seed 0 "${LAYOUT[@]}"
# Each run continues from the previous one's checkpoint (fresh optimiser state).
prev="$WORK/base"
for run in $(seq "$LMM_RUNS"); do
  out="$WORK/lmm"
  if [[ $run -lt $LMM_RUNS ]]; then
    out="$WORK/lmm-run$run"
  fi
  "$GRAIN" train-lmm --model "$prev" --data "$WORK/data/lmm.jsonl" --out "$out" \
    --epochs 6 --batch-size 8 --lr 3e-3 --seed 0 --val-split 0.1 --freeze-projector --quiet
  prev="$out"
done
"$GRAIN" train-router --model "$WORK/lmm" --data "$WORK/data/router.jsonl" --out "$WORK/routed" \
  --epochs 12 --batch-size 8 --lr 5e-3 --tie-tolerance 0.02 --seed 0 --val-split 0.5 \
  --text-vote-scale 30 --quiet

echo
echo "reports: $WORK/lmm/lmm_report.json and $WORK/routed/rglf_report.json"
echo "serve the trained checkpoint: $GRAIN serve --model $WORK/routed"

# Optional: serve both checkpoints, send the same held-out questions, compare the granularity mix.
if [[ ${SERVE:-0} == 1 ]]; then
  ask() { # port image question
    local b64
    b64=$(base64 -w0 "$2")
    curl -s "http://127.0.0.1:$1/v1/chat/completions" -H 'content-type: application/json' -d @- >/dev/null <<JSON
{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
  {"type": "image_url", "image_url": {"url": "data:image/png;base64,$b64"}},
  {"type": "text", "text": "$3"}]}]}
JSON
  }
  # Fresh images (another seed): neither the LMM nor the router saw them.
  "$GRAIN" make-rglf-data --out "$WORK/fresh" --lmm 0 --router 40 --seed 7 "${LAYOUT[@]}" >/dev/null
  for ckpt in lmm routed; do
    "$GRAIN" serve --model "$WORK/$ckpt" --served-model-name m --port 18321 \
      >"$WORK/serve-$ckpt.log" 2>&1 &
    pid=$!
    until curl -sf http://127.0.0.1:18321/ready >/dev/null; do sleep 0.5; done
    while read -r line; do
      img=$(sed -E 's/.*"image":"([^"]+)".*/\1/' <<<"$line")
      q=$(sed -E 's/.*"question":"([^"]+)".*/\1/' <<<"$line")
      ask 18321 "$WORK/fresh/$img" "$q"
    done <"$WORK/fresh/router.jsonl"
    echo "== $ckpt: grain_granularity_selected_total after 40 requests"
    curl -s http://127.0.0.1:18321/metrics |
      grep -E '^grain_(granularity_selected_total\{.*source="router"|visual_tokens_total)'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
fi
