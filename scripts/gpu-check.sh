#!/usr/bin/env bash
# The one script run on the GPU test machine (H100/H200, CUDA 13, PyTorch + transformers, no Rust
# toolchain, no network), from the repository root, with the binary that scripts/build-cuda.sh
# built carried along (target-cuda/release/grain). About 2 minutes on an H200 (88-109 s). See docs/gpu.md.
#
#   (a) correctness: `grain check-device parity` on the tiny checkpoints (both layouts, two images
#       each): CUDA vs CPU, f32 (same router decision, same greedy ids, logits within 1e-3 of
#       their range) and bf16 (logits within bf16 tolerance); `grain check-device kernels`: the
#       paged KV kernels against their CPU form at 7B head shapes;
#   (b) Grain's decoder with random 7B-shaped bf16 weights (LLaVA-NeXT-7B: hidden 4096, 32 layers,
#       32 heads, MLP 11008, vocab 32064): decode step at batch 1/8/16 with 3000 cached tokens,
#       prefill of 2988, 804 and 252 tokens (a 672x672 image at granularity 576/144/36 plus 60
#       text tokens), against the HBM floor;
#   (c) HF transformers (eager attention, the issue's baseline) on the same shapes, same run;
#   (d) end to end: `grain serve` on a 7B-shaped AVG-LLaVA (make-tiny --size 7b) driven by
#       `grain bench` at concurrency 16, router `auto` against fixed 576 and 36;
#   (e) the server's engine on the device against the same engine on the CPU
#       (scripts/serve-parity.py): one concurrent mix of image, text and raw-prompt requests, twice
#       (the second time through the prefix cache), same greedy text and logprobs, KV all freed.
# It prints a table last and writes every JSON to $OUT (gpu-check.json is the summary).
#
# Usage: scripts/gpu-check.sh            on the GPU machine
#        scripts/gpu-check.sh --dry-run  on a CPU: the same steps with `--device cpu` and small
#                                        shapes, to test the script's logic where there is no GPU
# Environment: GRAIN_BIN (the binary), GRAIN_PYTHON (python with torch + transformers for (c)),
#              OUT (output folder, default ./gpu-check-out), GRAIN_HBM_GBPS (override the card's
#              memory bandwidth used for the floor), GPU_CHECK_STEPS (the steps to run, default
#              abcde; e.g. `ade` when (b) and (c) were measured already).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DRY=0
[[ ${1:-} == --dry-run ]] && DRY=1
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
PY=${GRAIN_PYTHON:-python3}
T0=$(date +%s)
log() { echo "[gpu-check +$(($(date +%s) - T0))s] $*"; }
STEPS=${GPU_CHECK_STEPS:-abcde}
step() { [[ $STEPS == *$1* ]]; }

if ((DRY)); then
  [[ -z ${GRAIN_PYTHON:-} && -x .venv-parity/bin/python ]] && PY=.venv-parity/bin/python
  BIN=${GRAIN_BIN:-$(ls -t target/release/grain target/debug/grain 2>/dev/null | head -1)}
  DEVICE=cpu SHAPES=small BW=${GRAIN_HBM_GBPS:-20}
  BENCH_ARGS=(--steps 3 --warmup 1 --prefill-runs 1 --ab-fused --ab-gemv --ab-fixed-partition
    --ab-query-block 128)
  HF_ENV=(HF_SHAPES=small HF_DEVICE=cpu HF_STEPS=3)
else
  BIN=${GRAIN_BIN:-target-cuda/release/grain}
  DEVICE=cuda:0 SHAPES=7b
  # The CUDA libraries are those of the PyTorch install (nvidia/cu13/lib in its site-packages).
  LIBS=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13)
  libdirs=$("$PY" - "${LIBS[@]}" 2>/dev/null <<'PYEOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = []
for lib in sys.argv[1:]:
    for root in roots:
        for f in glob.glob(os.path.join(root, "nvidia", "**", lib), recursive=True):
            if os.path.dirname(f) not in dirs:
                dirs.append(os.path.dirname(f))
print(":".join(dirs))
PYEOF
  )
  if [[ -z $libdirs ]]; then # not a pip install of PyTorch: one pass over the file system
    libdirs=$(find / \( -path /proc -o -path /sys \) -prune -o \( -name libcudart.so.13 -o \
      -name libcublas.so.13 -o -name libcublasLt.so.13 -o -name libcurand.so.10 -o \
      -name libnvrtc.so.13 \) -print 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
  fi
  export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  case "$name" in
    *H200*) bw=4800 ;;
    *H100*PCIe*) bw=2000 ;;
    *H100*NVL*) bw=3900 ;;
    *H100*) bw=3350 ;;
    *A100*) bw=2039 ;;
    *) bw=3350 ;;
  esac
  BW=${GRAIN_HBM_GBPS:-$bw}
  BENCH_ARGS=(--ab-fused --ab-gemv --ab-fixed-partition --ab-query-block 128,512)
  HF_ENV=(HF_SHAPES=7b HF_DEVICE=cuda HF_STEPS=20)
  log "GPU: ${name:-unknown} (HBM ${BW} GB/s for the floor); driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
  log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi
if [[ ! -x $BIN ]]; then
  echo "gpu-check: no grain binary at '$BIN' (build it with scripts/build-cuda.sh and carry it)" >&2
  exit 2
fi
if grep -q 'not found' <<<"$(ldd "$BIN")"; then
  echo "gpu-check: $BIN misses shared libraries:" >&2
  ldd "$BIN" | grep 'not found' >&2
  exit 2
fi
log "binary: $BIN ($(stat -c %s "$BIN") bytes), out: $OUT"

# (a) correctness
parity_fail=0
step a && for model in avg-tiny hf-tiny; do
  for img in wide1000x500 square672; do
    name=parity-$model-$img
    if timeout 180 "$BIN" check-device parity --model "tests/fixtures/$model" \
      --image "tests/fixtures/images/$img.png" --device "$DEVICE" --json "$OUT/$name.json" \
      >"$OUT/$name.log" 2>&1; then
      log "(a) $name: pass"
    else
      parity_fail=1
      log "(a) $name: FAIL (see $OUT/$name.log)"
      tail -5 "$OUT/$name.log"
    fi
  done
done

# (a) the paged KV kernels against their CPU form, 7B head shapes
if ! step a; then
  log "(a) skipped"
elif timeout 180 "$BIN" check-device kernels --device "$DEVICE" --json "$OUT/kernels.json" \
  >"$OUT/kernels.log" 2>&1; then
  log "(a) kernels: pass"
else
  parity_fail=1
  log "(a) kernels: FAIL (see $OUT/kernels.log)"
  tail -5 "$OUT/kernels.log"
fi

# (b) Grain, 7B shapes
if ! step b; then
  log "(b) skipped"
elif log "(b) grain bench ($SHAPES on $DEVICE)" && ! timeout 300 "$BIN" check-device bench --device "$DEVICE" --shapes "$SHAPES" --hbm-gbps "$BW" \
  "${BENCH_ARGS[@]}" --json "$OUT/bench-grain.json" >"$OUT/bench-grain.log" 2>&1; then
  log "(b) grain bench failed:"
  tail -20 "$OUT/bench-grain.log"
fi

# (c) HF transformers on the same shapes (skipped when torch/transformers are missing)
if ! step c; then
  log "(c) skipped"
elif log "(c) HF transformers baseline ($SHAPES)" && "$PY" -c 'import torch, transformers' 2>/dev/null; then
  env "${HF_ENV[@]}" HF_OUT="$OUT/bench-hf.json" timeout 300 "$PY" - >"$OUT/bench-hf.log" 2>&1 <<'PYEOF' || { log "(c) HF baseline failed:"; tail -20 "$OUT/bench-hf.log"; }
import json, os, statistics, time
import warnings
import torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM, DynamicCache

warnings.filterwarnings("ignore", category=FutureWarning)  # past_key_values: renamed in 5.x
shapes = os.environ["HF_SHAPES"]
dev = torch.device(os.environ["HF_DEVICE"])
steps = int(os.environ["HF_STEPS"])
if shapes == "7b":
    dims = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32064)
    dtype = torch.bfloat16
else:
    dims = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=1024)
    dtype = torch.float32
cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, **dims)
cfg._attn_implementation = "eager"
torch.manual_seed(0)
torch.set_default_dtype(dtype)
with dev:
    model = LlamaForCausalLM(cfg).eval()
torch.set_default_dtype(torch.float32)
sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
hd = cfg.hidden_size // cfg.num_attention_heads

def make_cache(batch, n):
    try:
        cache = DynamicCache(config=cfg)
    except TypeError:
        cache = DynamicCache()
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(batch, cfg.num_key_value_heads, n, hd, dtype=dtype, device=dev)
        cache.update(k, torch.randn_like(k), layer)
    return cache

def timed(fn, warmup, runs):
    out = []
    for i in range(warmup + runs):
        sync(); t = time.perf_counter(); fn(); sync()
        if i >= warmup:
            out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)

res = {"check": "hf", "torch": torch.__version__, "transformers": transformers.__version__,
       "device": str(dev), "dtype": str(dtype), "shapes": shapes, "attn": "eager",
       "decode": [], "prefill": []}
with torch.inference_mode():
    for batch in (1, 8, 16):
        cache = make_cache(batch, 3000)
        ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=dev)
        pos = torch.full((batch, 1), 3000, device=dev)
        def step():
            model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True,
                  cache_position=torch.tensor([3000], device=dev)).logits.float().cpu()
            cache.crop(-1)  # back to 3000 cached tokens (negative: remove, in 4.x and 5.x)
        ms = timed(step, 3, steps)
        res["decode"].append({"batch": batch, "context": 3001, "step_ms_median": ms,
                              "tokens_per_s": batch / ms * 1e3})
        del cache
    for n in (2988, 804, 252):
        ids = torch.randint(0, cfg.vocab_size, (1, n), device=dev)
        def prefill():
            try:  # only the last position's logits, as generate() does
                out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
            except TypeError:
                out = model(input_ids=ids, use_cache=False)
            out.logits[:, -1].float().cpu()
        ms = timed(prefill, 1, 5)
        res["prefill"].append({"tokens": n, "ms_median": ms, "tokens_per_s": n / ms * 1e3})
json.dump(res, open(os.environ["HF_OUT"], "w"), indent=1)
print(json.dumps(res))
PYEOF
else
  log "(c) skipped: $PY has no torch/transformers"
fi

# (d) end to end: `grain serve` on an AVG-LLaVA checkpoint of 7B shapes (random bf16 weights,
# written by `make-tiny --size 7b`: 13.8 GB in a scratch directory), driven by `grain bench` at
# concurrency 16 with 672x672 images: the router at `auto` against fixed 576 and 36, one run.
if ((DRY)); then
  E2E=(small 8 4)
  E2E_ARGS=()
else
  E2E=(7b 32 16)
  E2E_ARGS=(--spawn-arg=--kv-cache-memory-mib=32768)
fi
E2E_DIR=$(mktemp -d "${GRAIN_SCRATCH:-${TMPDIR:-/tmp}}/grain-e2e.XXXXXX")
if ! step d; then
  log "(d) skipped"
elif log "(d) end to end: make-tiny --size ${E2E[0]}" && timeout 150 "$BIN" make-tiny --layout avg --size "${E2E[0]}" --out "$E2E_DIR/avg" \
  >"$OUT/e2e-make.log" 2>&1; then
  log "(d) grain bench --spawn (auto, 576, 36; concurrency ${E2E[2]}, ${E2E[1]} requests each)"
  if ! timeout 330 "$BIN" bench --spawn "$BIN" --spawn-model "$E2E_DIR/avg" \
    --spawn-arg=--device="$DEVICE" --spawn-log "$OUT/e2e-server.log" "${E2E_ARGS[@]}" \
    --image-sizes 672x672 --granularity auto,576,36 --concurrency "${E2E[2]}" \
    --num-requests "${E2E[1]}" --max-tokens 32 --warmup 2 --seed 1 --quiet \
    --json "$OUT/e2e.json" >"$OUT/e2e.log" 2>&1; then
    log "(d) end to end failed:"
    tail -20 "$OUT/e2e.log"
  fi
else
  log "(d) make-tiny failed:"
  tail -5 "$OUT/e2e-make.log"
fi
rm -rf "$E2E_DIR"

# (e) the server's engine on the device against the CPU's, f32, on the tiny AVG checkpoint
if ! step e; then
  log "(e) skipped"
elif timeout 300 python3 scripts/serve-parity.py "$BIN" tests/fixtures/avg-tiny "$DEVICE" \
  "$OUT/serve-parity.json" >"$OUT/serve-parity.log" 2>&1; then
  log "(e) serve parity: pass"
else
  parity_fail=1
  log "(e) serve parity: FAIL (see $OUT/serve-parity.log)"
  tail -12 "$OUT/serve-parity.log"
fi

# Summary table and gpu-check.json
python3 - "$OUT" "$parity_fail" "$DRY" "$STEPS" <<'PYEOF'
import glob, json, os, sys
out, parity_fail, dry, steps = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4]
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
parity = {os.path.basename(p)[7:-5]: load(p) for p in sorted(glob.glob(f"{out}/parity-*.json"))}
grain, hf = load(f"{out}/bench-grain.json"), load(f"{out}/bench-hf.json")
# The issue's HF figures on an H100, used when (c) did not run.
HF_ISSUE = {"decode": {1: 36.0, 8: 154.0, 16: 169.0}, "prefill": {2988: 96.0, 252: 27.5}}
print("\n== (a) correctness: device vs CPU")
print(f"{'case':<26}{'pass':<6}{'f32 max|d|':>12}{'tol':>10}{'bf16 max|d|':>13}{'tol':>10}{'cpu bf16':>10}  router")
for k, v in parity.items():
    r = v["report"] if v else None
    if not r:
        print(f"{k:<26}{'FAIL':<6} (no report)"); continue
    print(f"{k:<26}{str(r['pass']):<6}{r['f32_max_abs_diff']:>12.2e}{r['f32_tolerance']:>10.2e}"
          f"{r['bf16_max_abs_diff']:>13.2e}{r['bf16_tolerance']:>10.2e}{r['cpu_bf16_max_abs_diff']:>10.2e}"
          f"  {'tie' if r['router_tie'] else 'same'}")
if "a" in steps and len(parity) < 4:
    parity_fail = True
kernels = load(f"{out}/kernels.json")
print("\n== (a) paged KV kernels: device vs CPU (contexts 1..3001, blocks of 16)")
print(f"{'heads/kv':<12}{'part':<6}{'dtype':<7}{'write':<8}{'max|d|':>10}{'tol':>10}  pass")
for c in (kernels or {}).get("cases", []):
    print(f"{str(c['heads']) + '/' + str(c['kv_heads']):<12}{c.get('partition') or 'auto'!s:<6}{c['dtype']:<7}"
          f"{'exact' if c['write_exact'] else 'DIFF':<8}{c['max_abs_diff']:>10.2e}{c['tolerance']:>10.2e}  {c['pass']}")
fused = (kernels or {}).get("fused", [])
if fused:
    worst = max(fused, key=lambda c: c["max_abs_diff"] / c["tolerance"])
    print(f"fused decoder kernels vs candle ops: {sum(c['pass'] for c in fused)}/{len(fused)} pass; "
          f"worst {worst['kernel']} {worst['dtype']} rows {worst['rows']}: "
          f"{worst['max_abs_diff']:.2e} (tol {worst['tolerance']:.2e})")
if "a" in steps and (not kernels or not kernels.get("pass")):
    print("(no passing kernel report)")
    parity_fail = True
hf_dec = {d["batch"]: d["tokens_per_s"] for d in (hf or {}).get("decode", [])}
hf_pre = {p["tokens"]: p["ms_median"] for p in (hf or {}).get("prefill", [])}
src = "measured" if hf else ("issue (H100)" if grain and grain["shapes"] == "7b" else "none")
verdict = {}
if grain:
    print(f"\n== (b) Grain decoder, {grain['shapes']} shapes, {grain['dtype']} on {grain['device']} "
          f"(floor at {grain['hbm_gbps']} GB/s); (c) HF: {src}")
    print(f"{'decode':<16}{'step ms':>9}{'tok/s':>9}{'floor ms':>10}{'of floor':>10}{'HF tok/s':>10}{'x HF':>7}")
    for d in grain["decode"]:
        h = hf_dec.get(d["batch"]) or (HF_ISSUE["decode"].get(d["batch"]) if src.startswith("issue") else None)
        x = d["tokens_per_s"] / h if h else None
        print(f"{'batch ' + str(d['batch']):<16}{d['step_ms_median']:>9.2f}{d['tokens_per_s']:>9.1f}"
              f"{d['floor_ms']:>10.2f}{d['floor_fraction']:>10.0%}{h or float('nan'):>10.1f}"
              f"{x or float('nan'):>7.2f}")
        if d["batch"] == 1:
            verdict["batch1_floor_fraction>=0.60"] = d["floor_fraction"] >= 0.60
        if d["batch"] == 16 and x:
            verdict["batch16_vs_hf>=4x"] = x >= 4.0
    print("host time to enqueue a step (before the logits are fetched): " + ", ".join(
        f"batch {d['batch']} {d.get('enqueue_ms_median', float('nan')):.2f} ms" for d in grain["decode"]))
    for key, what in (("decode_unfused", "fused kernels off"),
                      ("decode_no_gemv", "one-row projections on cuBLAS"),
                      ("decode_partition256", "attention partition fixed at 256")):
        if grain.get(key):
            print(f"decode, {what} (same process): " + ", ".join(
                f"batch {d['batch']} {d['step_ms_median']:.2f} ms" for d in grain[key]))
    unfused = {p["tokens"]: p["ms_median"] for p in grain.get("prefill_unfused") or []}
    print(f"{'prefill':<16}{'ms':>9}{'tok/s':>9}{'HF ms':>10}{'x HF':>7}{'unfused ms':>12}")
    for p in grain["prefill"]:
        h = hf_pre.get(p["tokens"]) or (HF_ISSUE["prefill"].get(p["tokens"]) if src.startswith("issue") else None)
        print(f"{str(p['tokens']) + ' tokens':<16}{p['ms_median']:>9.1f}{p['tokens_per_s']:>9.0f}"
              f"{h or float('nan'):>10.1f}{(h / p['ms_median']) if h else float('nan'):>7.2f}"
              f"{unfused.get(p['tokens'], float('nan')):>12.1f}")
    by_block = {}
    for p in grain.get("prefill_query_block") or []:
        by_block.setdefault(p["query_block"], []).append(f"{p['tokens']} tokens {p['ms_median']:.1f} ms")
    for rows, runs in by_block.items():
        print(f"prefill, {rows}-row query blocks instead of 256 (same process): " + ", ".join(runs))
else:
    print("\n== (b) Grain bench: no result")
e2e = load(f"{out}/e2e.json")
if e2e:
    print(f"\n== (d) end to end, grain serve + grain bench, {e2e['points'][0]['load']['value']} in flight, 672x672 images")
    print(f"{'granularity':<14}{'out tok/s':>10}{'req/s':>8}{'visual tok':>12}{'prefill s/req':>15}{'e2e p50 s':>11}{'failed':>8}")
    by_mode = {}
    for p in e2e["points"]:
        sm = p["summary"]
        by_mode[str(p["mode"])] = sm
        pre = p.get("server_prefill_s_per_request")
        p50 = (sm.get("e2e_s") or {}).get("p50")
        print(f"{str(p['mode']):<14}{sm['output_tokens_per_s']:>10.1f}{sm['requests_per_s']:>8.2f}"
              f"{sm['mean_visual_tokens']:>12.0f}{pre if pre is not None else float('nan'):>15.3f}"
              f"{p50 if p50 is not None else float('nan'):>11.2f}{sm['failed']:>8}")
    a, f = by_mode.get("auto"), by_mode.get("576")
    if a and f and a["output_tokens_per_s"] and f["mean_visual_tokens"]:
        verdict["e2e_auto_over_576"] = round(a["requests_per_s"] / f["requests_per_s"], 3)
        print(f"auto / 576: requests/s x{a['requests_per_s'] / f['requests_per_s']:.2f} "
              f"for {a['mean_visual_tokens'] / f['mean_visual_tokens']:.0%} of the visual tokens "
              f"(the router's choices: {a.get('granularity_counts')})")
else:
    print("\n== (d) end to end: no result")
serve = load(f"{out}/serve-parity.json")
if serve:
    print(f"\n== (e) serve parity, {serve['device']} vs cpu (f32, avg-tiny, concurrent mix x 2 rounds): "
          f"{'PASS' if serve['pass'] else 'FAIL'}")
    for p in serve["problems"]:
        print("  " + p)
    print("  prefix-cache hit tokens: " + ", ".join(
        f"{k} {serve['servers'].get(k, {}).get('prefix_cache_hit_tokens')}" for k in ("cpu", "device", "device-bf16")))
elif "e" in steps:
    parity_fail = True
    print("\n== (e) serve parity: no result")
summary = {"dry_run": dry, "steps": steps, "parity_pass": not parity_fail, "e2e": e2e, "serve_parity": serve,
           "parity": parity, "kernels": kernels,
           "grain": grain,
           "hf": hf, "hf_source": src, "targets": verdict}
json.dump(summary, open(f"{out}/gpu-check.json", "w"), indent=1)
print(f"\nparity: {'PASS' if not parity_fail else 'FAIL'}; targets: {verdict or 'n/a'}")
print(f"wrote {out}/gpu-check.json")
sys.exit(1 if parity_fail or ("b" in steps and grain is None) else 0)
PYEOF
status=$?
log "done (exit $status)"
exit $status
