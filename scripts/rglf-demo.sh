#!/usr/bin/env bash
# RGLF end to end on the synthetic fine-vs-coarse task, on CPU, in about ten minutes:
#   1. a tiny AVG checkpoint (random weights, random router);
#   2. the synthetic question set (fine: a framed one-cell mark's colour; coarse: the picture's colour);
#   3. fine-tune its projector + LM at mixed granularities so fine questions need fine detail;
#   4. train the router with RGLF on other images, evaluate on held-out ones.
# Usage: scripts/rglf-demo.sh [WORK_DIR]   (default: target/rglf-demo). Everything is seeded.
set -euo pipefail

cd "$(dirname "$0")/.."
WORK=${1:-target/rglf-demo}
# The dev profile builds dependencies (candle) at -O3, fast enough here and much quicker to build.
GRAIN=${GRAIN:-target/debug/grain}
if [[ ! -x $GRAIN ]]; then
  cargo build -p grain
fi
rm -rf "$WORK"
mkdir -p "$WORK"

"$GRAIN" make-tiny --layout avg --size tiny --seed 0 --out "$WORK/base"
"$GRAIN" make-rglf-data --out "$WORK/data" --lmm 600 --router 240 --seed 0
"$GRAIN" train-lmm --model "$WORK/base" --data "$WORK/data/lmm.jsonl" --out "$WORK/lmm" \
  --epochs 2 --batch-size 8 --lr 3e-3 --seed 0 --val-split 0.1 --quiet
"$GRAIN" train-router --model "$WORK/lmm" --data "$WORK/data/router.jsonl" --out "$WORK/routed" \
  --epochs 30 --batch-size 16 --lr 1e-3 --seed 0 --val-split 0.5 --quiet

echo
echo "reports: $WORK/lmm/lmm_report.json and $WORK/routed/rglf_report.json"
echo "serve the trained checkpoint: $GRAIN serve --model $WORK/routed"
