#!/usr/bin/env bash
# The router's cost against the 576 prefill on the tiny AVG checkpoint (issue 3, docs/architecture.md
# "Router cost"), over `grain bench`'s realistic spread of image sizes:
#
#   benchmarks/router_cost.sh [runs]        # default 30 runs per size
#
# For each size `router_cost tiny WxH RUNS` (crates/grain-model/examples/router_cost.rs) times the
# router (median) and the prefill at each granularity (mean); the sizes are weighted as the spread
# draws them. Prints each size and the weighted router / prefill @576.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
cargo build --release -p grain-model --example router_cost >&2
BIN=target/release/examples/router_cost
python3 - "$BIN" "$RUNS" <<'PY'
import re, subprocess, sys

binary, runs = sys.argv[1], sys.argv[2]
# grain bench's realistic spread (crates/grain-bench/src/image.rs), as weights.
spread = [("640x480", .25), ("640x427", .15), ("480x640", .10), ("500x375", .10),
          ("1024x768", .10), ("1280x720", .10), ("800x800", .08), ("427x640", .07),
          ("336x336", .05)]
router_total = prefill_total = 0.0
for size, weight in spread:
    out = subprocess.run([binary, "tiny", size, runs], capture_output=True, text=True,
                         check=True).stdout
    router = float(re.search(r"router [\d.]+ ms \(median ([\d.]+) ms\)", out).group(1))
    prefill = float(re.search(r"^\s+576\s+\d+\s+([\d.]+)", out, re.M).group(1))
    print(f"{size:>9}  weight {weight:.2f}  router {router:.2f} ms  prefill@576 {prefill:.1f} ms"
          f"  {100 * router / prefill:.1f} %")
    router_total += weight * router
    prefill_total += weight * prefill
print(f"weighted: router {router_total:.2f} ms, prefill@576 {prefill_total:.1f} ms, "
      f"router / prefill@576 {100 * router_total / prefill_total:.2f} %")
PY
