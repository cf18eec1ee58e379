#!/usr/bin/env python3
"""Self-test of the AVG reference (run: .venv-parity/bin/python tests/parity/avg_selftest.py).

Each check compares the reference with something independent of it: numbers given in DESIGN.md,
transformers' own AnyRes helpers, brute-force loops in float64, a hand-written LLaVA crop
pipeline, or structural invariants of the router. A random checkpoint with the exact
`grain make-tiny --layout avg` layout is written to a temp dir for the end-to-end checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import unpad_image as hf_unpad_image

import avg_make_fixtures
import avg_reference
import make_avg_reference
from avg_anyres import (
    DEFAULT_GRANULARITIES,
    DEFAULT_PINPOINTS,
    grid_shape,
    merge,
    pool,
    pooled_map_shape,
    select_best_resolution,
    tile_map_shape,
    token_total,
    unpad_bounds,
)
from avg_checkpoint import CLIP_MEAN, CLIP_STD, AvgModel
from avg_router import explicit_merger, random_router, select_text
from avg_tiny import write_checkpoint

# From the brief / DESIGN.md section 3 (verified there against the official code).
EXPECTED_TOTALS = {
    (672, 672): [192, 228, 744, 888, 2928],
    (1000, 500): [114, 150, 444, 588, 1752],
    (1008, 336): [150, 186, 588, 732, 2328],
}
# DESIGN.md's pooling windows, (kernel_h, kernel_w), written out independently of pool_kernel().
WINDOWS = {576: (1, 1), 288: (1, 2), 144: (2, 2), 72: (2, 4), 36: (4, 4)}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "avg-ref"
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> None:
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if not diff <= atol:
        raise AssertionError(f"{what}: max abs diff {diff:.3g} > {atol}")


@check
def expected_totals():
    for size, want in EXPECTED_TOTALS.items():
        got = [token_total(size, g)[0] for g in DEFAULT_GRANULARITIES]
        assert got == want, f"{size}: {got} != {want}"


@check
def best_resolution_matches_transformers():
    # transformers reads pinpoints and sizes as (height, width): swap both, swap the answer back.
    swapped = [(h, w) for (w, h) in DEFAULT_PINPOINTS]
    sizes = avg_make_fixtures.count_sizes() + [(w, h) for w in range(1, 2200, 97) for h in range(1, 2200, 89)]
    for w, h in sizes:
        hf_h, hf_w = hf_select_best_resolution((h, w), swapped)
        assert select_best_resolution((w, h), DEFAULT_PINPOINTS) == (hf_w, hf_h), (w, h)
    # Exact tie broken by list order: a small square goes to the first 2-tile canvas, 336 wide.
    assert grid_shape((100, 100), DEFAULT_PINPOINTS) == (1, 2)


@check
def pooling_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 576, 3, generator=gen)
    grid = features.double().numpy().reshape(2, 24, 24, 3)
    for g, (kh, kw) in WINDOWS.items():
        rows, cols = 24 // kh, 24 // kw
        want = np.zeros((2, rows * cols, 3))
        for c in range(2):
            for r in range(rows):
                for q in range(cols):
                    want[c, r * cols + q] = grid[c, r * kh : (r + 1) * kh, q * kw : (q + 1) * kw].mean(axis=(0, 1))
        close(pool(features, g), torch.from_numpy(want), 1e-6, f"pool {g}")
        assert pooled_map_shape(g) == (rows, cols)


@check
def merge_tile_shape_is_the_pooled_layout():
    for g in DEFAULT_GRANULARITIES:
        assert tile_map_shape(g) == pooled_map_shape(g), g


@check
def unpad_matches_transformers_up_to_rounding():
    # transformers' unpad_image differs from the original only by int(round(x, 7)) vs int(x).
    sizes = avg_make_fixtures.count_sizes() + [(w, h) for w in range(1, 2100, 61) for h in range(1, 2100, 53)]
    differing = 0
    for size in sizes:
        for g in DEFAULT_GRANULARITIES:
            gw, gh = grid_shape(size, DEFAULT_PINPOINTS)
            th, tw = tile_map_shape(g)
            rows, cols = gh * th, gw * tw
            mine = unpad_bounds(rows, cols, size)
            kept = hf_unpad_image(torch.zeros(1, rows, cols), (size[1], size[0])).shape[1:]
            if (mine[1] - mine[0], mine[3] - mine[2]) != tuple(kept):
                differing += 1
                axis = 0 if mine[3] - mine[2] == cols else 1
                length = [rows, cols][axis]
                orig_long, orig_other = (size[1], size[0]) if axis == 0 else (size[0], size[1])
                x = orig_long * ([cols, rows][axis] / orig_other)
                assert int(x) != int(round(x, 7)), f"{size} G={g}: differs without float noise"
                assert length - 2 * ((length - int(x)) // 2) == mine[2 * axis + 1] - mine[2 * axis]
    assert differing > 0, "expected some float-noise sizes in the sample"


def _coded_crops(n: int, g: int) -> torch.Tensor:
    """(n, G, 2): each token carries (crop index, token index)."""
    crop = torch.arange(n, dtype=torch.float64)[:, None].expand(n, g)
    token = torch.arange(g, dtype=torch.float64)[None, :].expand(n, g)
    return torch.stack([crop, token], dim=-1)


@check
def merge_places_every_token():
    newline = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    for size in [(800, 600), (1000, 500), (300, 1000), (1008, 336), (672, 672), (1, 5000), (20, 30), (44, 99)]:
        gw, gh = grid_shape(size, DEFAULT_PINPOINTS)
        for g in DEFAULT_GRANULARITIES:
            crops = _coded_crops(1 + gw * gh, g)
            merged, layout = merge(crops, newline, size, DEFAULT_PINPOINTS)
            h, w = WINDOWS[g]
            h, w = 24 // h, 24 // w
            r0, r1, c0, c1 = unpad_bounds(gh * h, gw * w, size)
            want = [[0.0, float(i)] for i in range(g)]
            for r in range(r0, r1):
                for c in range(c0, c1):
                    tile = (r // h) * gw + c // w
                    want.append([1.0 + tile, float((r % h) * w + c % w)])
                want.append([-1.0, -1.0])
            close(merged, torch.tensor(want, dtype=torch.float64), 0.0, f"merge {size} G={g}")
            assert layout.total == len(want)


@check
def single_crop_gets_one_newline():
    crops = torch.randn(1, 36, 4)
    newline = torch.randn(4)
    merged, layout = merge(crops, newline, (500, 500), DEFAULT_PINPOINTS)
    assert layout is None and merged.shape == (37, 4)
    close(merged[-1], newline, 0.0, "newline")


@check
def text_filter_matches_float64():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(576, 16, generator=gen) + 0.5
    for count in (40, 10, 1):
        text = torch.randn(count, 16, generator=gen)
        text[0] = 0.0  # a zero row
        if count > 1:
            text[1] *= 1e-10  # norm below eps: torch clamps each norm separately, not their product
        selected, scores, order = select_text(base, text, 32)
        b, t = base.double().numpy(), text.double().numpy()
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-8)
        tn = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-8)
        want = (bn @ tn.T).mean(axis=0)
        close(scores, torch.from_numpy(want), 1e-6, "scores")
        want_order = sorted(range(count), key=lambda i: (-want[i], i))[:32]
        assert order.tolist() == want_order
        assert selected.shape == (32, 16)
        close(selected[: len(want_order)], text[want_order], 0.0, "selected")
        assert not selected[len(want_order) :].any()
    selected, scores, order = select_text(base, torch.zeros(0, 16), 32)
    assert not selected.any() and scores.numel() == 0


@check
def merger_layer_matches_explicit_math():
    router = random_router(64, seed=3)
    x = torch.randn(3, 1148, 64, generator=torch.Generator().manual_seed(2))
    params = {k: v for k, v in router.merger.state_dict().items()}
    with torch.no_grad():
        close(router.merger(x), explicit_merger(x, params), 2e-5, "merger")


@check
def merger_attends_across_crops_only():
    router = random_router(64, seed=4)
    x = torch.randn(3, 1148, 64, generator=torch.Generator().manual_seed(5))
    y = x.clone()
    y[:, 7] += 1.0
    with torch.no_grad():
        diff = (router.merger(x) - router.merger(y)).abs().amax(dim=(0, 2))
    assert diff[7] > 1e-3 and diff[torch.arange(1148) != 7].max() == 0.0


@check
def router_head_matches_float64():
    router = random_router(64, seed=6)
    gen = torch.Generator().manual_seed(7)
    features, text = torch.randn(4, 576, 64, generator=gen), torch.randn(50, 64, generator=gen)
    trace = router(features, text)
    sd = {k: v.double().numpy() for k, v in router.state_dict().items()}
    m = trace.merger_out.double().numpy()
    hidden = m @ sd["router.0.weight"].T + sd["router.0.bias"]
    hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    per_token = hidden @ sd["router.2.weight"].T + sd["router.2.bias"]
    crop_logits = np.zeros((4, 5))
    for c in range(4):
        for k in range(1148):
            crop_logits[c] += per_token[c, k] * sd["voter"][k, 0]
    pre = crop_logits.mean(axis=0)
    logits = (pre - pre.mean()) / np.sqrt(pre.var() + 1e-5) * sd["norm.weight"] + sd["norm.bias"]
    close(trace.crop_logits, torch.from_numpy(crop_logits), 1e-3, "crop logits")
    close(trace.router_logits, torch.from_numpy(logits), 1e-4, "router logits")
    assert trace.index == int(np.argmax(logits))
    want_input = torch.cat(
        [pool(features, g) for g in DEFAULT_GRANULARITIES] + [trace.text_selected.expand(4, -1, -1)], 1
    )
    close(trace.router_input, want_input, 0.0, "router input")


@check
def router_ignores_tile_order():
    router = random_router(64, seed=8)
    features = torch.randn(5, 576, 64, generator=torch.Generator().manual_seed(9))
    text = torch.randn(20, 64)
    a = router(features, text).router_logits
    b = router(features[[0, 3, 1, 4, 2]], text).router_logits
    close(a, b, 1e-5, "permuted tiles")


@check
def decision_changes_with_weights():
    features = torch.randn(3, 576, 64, generator=torch.Generator().manual_seed(10))
    text = torch.randn(30, 64, generator=torch.Generator().manual_seed(11))
    decisions = set()
    for seed in range(12):
        decisions.add(random_router(64, seed=seed)(features, text).index)
        if len(decisions) > 1:
            break
    assert len(decisions) > 1, f"every random router chose {decisions}"
    router = random_router(64, seed=0)
    for target in range(5):
        with torch.no_grad():
            router.norm.bias.zero_()
            router.norm.bias[target] = 100.0
        assert router(features, text).index == target


def _llava_crops(image: Image.Image, canvas: tuple[int, int]) -> torch.Tensor:
    """The original LLaVA crop pipeline written out with PIL: resize+pad, tiles, squashed base."""
    w, h = image.size
    cw, ch = canvas
    if cw / w < ch / h:
        nw, nh = cw, min(math.ceil(h * cw / w), ch)
    else:
        nw, nh = min(math.ceil(w * ch / h), cw), ch
    padded = Image.new("RGB", (cw, ch), (0, 0, 0))
    padded.paste(image.resize((nw, nh), Image.BICUBIC), ((cw - nw) // 2, (ch - nh) // 2))
    crops = [image.resize((336, 336), Image.BICUBIC)]
    crops += [padded.crop((x, y, x + 336, y + 336)) for y in range(0, ch, 336) for x in range(0, cw, 336)]
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return torch.stack([(torch.from_numpy(np.array(c)).permute(2, 0, 1) / 255.0 - mean) / std for c in crops])


def _image(w: int, h: int, seed: int) -> Image.Image:
    return make_avg_reference.synthetic_image(seed, w, h)


@check
def processor_matches_llava_crops():
    model = AvgModel.load(_checkpoint())
    for (w, h), seed in [((1000, 500), 0), ((300, 1000), 1), ((20, 30), 2), ((100, 100), 3)]:
        image = _image(w, h, seed)
        pixels = model.pixel_values(image)
        want = _llava_crops(image, select_best_resolution((w, h), model.pinpoints))
        close(pixels, want, 1e-4, f"pixels {w}x{h}")


_CHECKPOINT: list[Path] = []
_TMP = tempfile.TemporaryDirectory(prefix="avg-selftest-")


def _tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_TMP.name))


def _checkpoint() -> Path:
    if not _CHECKPOINT:
        _CHECKPOINT.append(write_checkpoint(_tmpdir("avg-tiny-"), seed=0))
    return _CHECKPOINT[0]


@check
def checkpoint_end_to_end():
    model = AvgModel.load(_checkpoint())
    prompt = [1, 17, 18, 19, -200, 20, 21]
    for (w, h), want in EXPECTED_TOTALS.items():
        result = model.run(_image(w, h, 0), prompt, -200)
        gw, gh = grid_shape((w, h), DEFAULT_PINPOINTS)
        assert result.features.shape == (1 + gw * gh, 576, 64)
        assert [result.counts[g] for g in DEFAULT_GRANULARITIES] == want
        assert result.merged.shape == (result.counts[result.granularity], 64)
        assert result.trace.router_logits.shape == (5,) and torch.isfinite(result.trace.router_logits).all()
        close(
            result.trace.text_selected[:6],
            model.embed_tokens[[1, 17, 18, 19, 20, 21]][result.trace.text_order],
            0,
            "text",
        )
    try:
        model.text_embeds([1, 2, 3], -200)
    except ValueError:
        pass
    else:
        raise AssertionError("a prompt without the image token must be rejected")


@check
def checkpoint_decision_depends_on_router_weights():
    image, prompt = _image(672, 672, 4), [1, 40, 41, 42, -200, 43]
    decisions = set()
    for router_seed in range(8):
        directory = write_checkpoint(_tmpdir("avg-tiny-r"), seed=0, router_seed=router_seed)
        decisions.add(AvgModel.load(directory).run(image, prompt, -200).trace.index)
        if len(decisions) > 1:
            return
    raise AssertionError(f"all router seeds chose {decisions}")


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = avg_reference.main(argv)
    return code, out.getvalue()


@check
def cli_commands():
    ckpt = _checkpoint()
    tmp = _tmpdir("avg-cli-")
    code, text = _cli(["counts", "--sizes", "672x672,1000x500,1008x336"])
    assert code == 0
    got = {tuple(r["size"]): [r["totals"][str(g)] for g in DEFAULT_GRANULARITIES] for r in json.loads(text)["images"]}
    assert got == EXPECTED_TOTALS

    model = AvgModel.load(ckpt)
    result = model.run(_image(1000, 500, 5), [1, 30, 31, -200, 32], -200)
    save_file(
        {"image_features": result.features.contiguous(), "text_embeds": model.embed_tokens[[1, 30, 31, 32]]},
        str(tmp / "dump.safetensors"),
    )
    code, text = _cli(["router", "--model", str(ckpt), "--dump", str(tmp / "dump.safetensors")])
    assert code == 0
    out = json.loads(text)
    close(torch.tensor(out["router_logits"]), result.trace.router_logits, 1e-6, "router cli")
    assert out["granularity"] == DEFAULT_GRANULARITIES[result.trace.index]

    _image(1000, 500, 5).save(tmp / "img.png")
    code, _ = _cli(["e2e", "--model", str(ckpt), "--image", str(tmp / "img.png"), "--prompt-ids", "1,30,31,-200,32",
                    "--write", str(tmp / "e2e.json")])  # fmt: skip
    written = json.loads((tmp / "e2e.json").read_text())
    assert code == 0 and written["token_counts"]["576"] == 1752 and written["n_crops"] == 3
    close(torch.tensor(written["router_logits"]), result.trace.router_logits, 1e-6, "e2e cli")

    save_file({"features": result.features.contiguous(), "newline": model.newline}, str(tmp / "feat.safetensors"))
    code, text = _cli(["merge", "--features", str(tmp / "feat.safetensors"), "--size", "1000x500", "--out",
                       str(tmp / "merged.safetensors")])  # fmt: skip
    merged = load_file(str(tmp / "merged.safetensors"))
    assert code == 0 and merged["merged.576"].shape == (1752, 64) and merged["merged.36"].shape == (114, 64)
    assert _cli(["merge", "--features", str(tmp / "dump.safetensors"), "--size", "10x10"])[0] == 1


@check
def make_avg_reference_runs():
    out = _tmpdir("avg-e2e-")
    # One image keeps this check short; the lead runs the full set on the Rust checkpoint.
    argv = ["--model", str(_checkpoint()), "--out", str(out), "--images", "square_672"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert make_avg_reference.main(argv) == 0
    data = json.loads((out / "e2e.json").read_text())
    assert len(data["cases"]) == 2
    model = AvgModel.load(_checkpoint())
    for case in data["cases"][:1]:
        image = Image.open(out / case["image"])
        size = tuple(case["image_size"])
        if size in EXPECTED_TOTALS:
            assert [case["token_counts"][str(g)] for g in DEFAULT_GRANULARITIES] == EXPECTED_TOTALS[size]
        again = model.run(image, case["prompt_ids"], case["image_token_id"])
        close(again.trace.router_logits, torch.tensor(case["router_logits"]), 1e-6, case["name"])


@check
def committed_fixtures_are_current():
    if not (FIXTURES / "token_counts.json").exists():
        print("    (no committed fixtures yet; skipped)")
        return
    tmp = _tmpdir("avg-fx-")
    with contextlib.redirect_stdout(io.StringIO()):
        avg_make_fixtures.main(["--out", str(tmp)])
    for name in ("token_counts.json", "merge_cases.json"):
        assert json.loads((FIXTURES / name).read_text()) == json.loads((tmp / name).read_text()), name
    for name in ("merge_cases.safetensors", "router_module.safetensors"):
        have, want = load_file(str(FIXTURES / name)), load_file(str(tmp / name))
        assert set(have) == set(want), name
        for key in want:
            close(have[key].float(), want[key].float(), 1e-5, f"{name}:{key}")
    counts = json.loads((FIXTURES / "token_counts.json").read_text())["images"]
    by_size = {tuple(r["size"]): [r["totals"][str(g)] for g in DEFAULT_GRANULARITIES] for r in counts}
    assert len(by_size) >= 60 and all(by_size[s] == v for s, v in EXPECTED_TOTALS.items())


def main() -> int:
    torch.set_grad_enabled(False)
    failed = 0
    for fn in CHECKS:
        try:
            start = time.perf_counter()
            fn()
            print(f"ok    {fn.__name__} ({time.perf_counter() - start:.1f}s)")
        except Exception:  # report every failing check, not just the first
            failed += 1
            print(f"FAIL  {fn.__name__}\n{traceback.format_exc()}")
    _TMP.cleanup()
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
