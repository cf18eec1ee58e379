#!/usr/bin/env python3
"""Write the weight-independent AVG fixtures into tests/fixtures/avg-ref/ (see avg_README.md).

  token_counts.json                    totals per granularity for many image sizes
  merge_cases.safetensors / .json      seeded features -> pooled + merged sequences
  router_module.safetensors            seeded standalone router at D=16 with every intermediate

Deterministic: rerunning rewrites identical numbers (torch CPU, fixed seeds).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from avg_anyres import DEFAULT_GRANULARITIES, DEFAULT_PINPOINTS, merge, pool, select_best_resolution
from avg_io import write_json
from avg_reference import counts_table
from avg_router import ROUTER_PREFIX, random_router

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fixtures" / "avg-ref"
MERGE_DIM = 8
MERGE_SIZES = [(800, 600), (1000, 500), (300, 1000)]
ROUTER_DIM = 16
ROUTER_CROPS = 3


def count_sizes() -> list[tuple[int, int]]:
    """The image sizes of token_counts.json: named cases first, then a seeded random sample."""
    examples = [(672, 672), (1000, 500), (1008, 336)]
    squares = [(s, s) for s in (1, 14, 100, 224, 335, 336, 337, 500, 671, 673, 1000, 1008, 1024, 2048, 4096)]
    extreme = [(2000, 50), (50, 2000), (5000, 336), (336, 5000), (4000, 10), (10, 4000), (1, 5000), (5000, 1),
               (3000, 1000), (1000, 3000), (2000, 1000), (1500, 500), (500, 1500)]  # fmt: skip
    tiny = [(20, 30), (30, 20), (1, 2), (2, 1), (13, 7), (7, 13)]
    odd = [(333, 777), (777, 333), (1001, 999), (999, 1001), (641, 480), (480, 641), (800, 600), (600, 800),
           (1280, 720), (720, 1280), (1920, 1080), (1080, 1920), (4032, 3024), (3024, 4032), (1366, 768),
           (123, 456), (555, 222), (700, 350), (1234, 617), (300, 1000)]  # fmt: skip
    # Exactly at, one below and one above each pinpoint canvas.
    boundaries = [(336, 672), (672, 336), (1008, 336), (336, 1008), (335, 672), (337, 672), (672, 335),
                  (672, 337), (1007, 336), (1009, 336), (336, 1007), (336, 1009), (671, 672), (673, 672),
                  (1008, 335), (1008, 337), (504, 504), (672, 671)]  # fmt: skip
    # f64 noise: orig * scale lands just below an integer (e.g. 26.999999999999996), so truncation
    # keeps one row/column fewer than transformers' round-to-7 would.
    float_noise = [(44, 99), (55, 176), (88, 99), (103, 309), (107, 1926), (164, 820), (173, 519)]
    rng = random.Random(20240601)
    sampled = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(12)]
    seen, out = set(), []
    for size in examples + squares + extreme + tiny + odd + boundaries + float_noise + sampled:
        if size not in seen:
            seen.add(size)
            out.append(size)
    return out


def write_token_counts(out: Path) -> int:
    images = counts_table(count_sizes(), DEFAULT_PINPOINTS, DEFAULT_GRANULARITIES)
    write_json(
        out / "token_counts.json",
        {
            "about": "AVG-LLaVA visual tokens per image: base crop + unpadded tiles + one newline per kept row. "
            "size/best_resolution are [width, height]; grid is [tiles across, tiles down]; "
            "pinpoints read as [width, height] like the original LLaVA code. round7_differs lists the "
            "granularities where unpad's f64 `orig * scale` sits just below an integer, so the original "
            "truncation (used here) keeps one row/column fewer than transformers' int(round(x, 7)).",
            "pinpoints": [list(p) for p in DEFAULT_PINPOINTS],
            "granularities": DEFAULT_GRANULARITIES,
            "images": images,
        },
    )
    return len(images)


def write_merge_cases(out: Path) -> None:
    gen = torch.Generator().manual_seed(1234)
    tensors, cases = {}, []
    for i, size in enumerate(MERGE_SIZES):
        best = select_best_resolution(size, DEFAULT_PINPOINTS)
        n = 1 + (best[0] // 336) * (best[1] // 336)
        # Small integers: every pooled mean is a multiple of 1/16 below 9, exact in f16 and f32, so
        # the file can be f16 (half the size) and consumers can compare with zero tolerance.
        features = torch.randint(-8, 9, (n, 576, MERGE_DIM), generator=gen).float()
        newline = torch.randint(-8, 9, (MERGE_DIM,), generator=gen).float() + 0.5
        tensors[f"case{i}.features"] = features
        tensors[f"case{i}.newline"] = newline
        per_g = {}
        for g in DEFAULT_GRANULARITIES:
            pooled = pool(features, g)
            merged, layout = merge(pooled, newline, size, DEFAULT_PINPOINTS)
            tensors[f"case{i}.merged.{g}"] = merged.contiguous()
            tensors[f"case{i}.pooled0.{g}"] = pooled[0].contiguous()
            per_g[str(g)] = {
                "total": layout.total,
                "tile_hw": list(layout.tile),
                "stitched_hw": list(layout.stitched),
                "kept_rows": list(layout.kept_rows),
                "kept_cols": list(layout.kept_cols),
            }
        cases.append(
            {
                "name": f"case{i}",
                "size": list(size),
                "best_resolution": list(best),
                "grid": [best[0] // 336, best[1] // 336],
                "n_crops": n,
                "granularities": per_g,
            }
        )
    half = {k: v.half() for k, v in tensors.items()}
    for name, value in tensors.items():
        if not torch.equal(half[name].float(), value):
            raise AssertionError(f"{name} is not exact in f16")
    save_file(half, str(out / "merge_cases.safetensors"), metadata={"seed": "1234", "dim": str(MERGE_DIM)})
    write_json(
        out / "merge_cases.json",
        {
            "about": "Tensors in merge_cases.safetensors (all F16, values exact: small integers and their "
            "window means, compare with zero tolerance) per case: features (n_crops,576,8) projected crops "
            "[base, tiles row-major]; newline (8); merged.<G> (total,8) the image's token sequence at G; "
            "pooled0.<G> (G,8) crop 0 pooled. kept_rows/kept_cols are [start, end) of the stitched "
            "(rows, cols) map kept by unpad.",
            "pinpoints": [list(p) for p in DEFAULT_PINPOINTS],
            "cases": cases,
        },
    )


def _text_like(gen: torch.Generator, count: int, direction: torch.Tensor) -> torch.Tensor:
    """Text rows with spread-out alignment to `direction`, so scores are well separated."""
    weights = torch.linspace(-2.0, 2.0, count)[torch.randperm(count, generator=gen)]
    return torch.randn(count, ROUTER_DIM, generator=gen) + weights[:, None] * direction


def write_router_module(out: Path) -> dict:
    router = random_router(ROUTER_DIM, seed=4321)
    gen = torch.Generator().manual_seed(4322)
    direction = torch.randn(ROUTER_DIM, generator=gen)
    features = torch.randn(ROUTER_CROPS, 576, ROUTER_DIM, generator=gen) + direction
    text = _text_like(gen, 40, direction)
    text10 = _text_like(gen, 10, direction)
    full, short = router(features, text), router(features, text10)

    tensors = {f"{ROUTER_PREFIX}{k}": v.contiguous() for k, v in router.state_dict().items()}
    tensors.update(
        {
            "image_features": features,
            "text_embeds": text,
            "text_scores": full.text_scores,
            "text_selected": full.text_selected,
            "router_input": full.router_input,
            "merger_out": full.merger_out,
            "crop_logits": full.crop_logits,
            "pre_norm_logits": full.pre_norm_logits,
            "router_logits": full.router_logits,
            "pad10.text_embeds": text10,
            "pad10.text_scores": short.text_scores,
            "pad10.text_selected": short.text_selected,
            # Attention runs across crops only, so rows 0..1116 equal merger_out's; store the rest.
            "pad10.merger_out_text": short.merger_out[:, sum(DEFAULT_GRANULARITIES) :],
            "pad10.crop_logits": short.crop_logits,
            "pad10.router_logits": short.router_logits,
        }
    )
    tensors = {k: v.contiguous().float() for k, v in tensors.items()}
    metadata = {
        "granularities": ",".join(map(str, DEFAULT_GRANULARITIES)),
        "filtered_text_num": "32",
        "merger_heads": "8",
        "granularity_index": str(full.index),
        "pad10.granularity_index": str(short.index),
        "text_order": ",".join(map(str, full.text_order.tolist())),
        "pad10.text_order": ",".join(map(str, short.text_order.tolist())),
    }
    save_file(tensors, str(out / "router_module.safetensors"), metadata=metadata)
    top = torch.sort(full.text_scores, descending=True).values[:33]
    return {"index": full.index, "pad10_index": short.index, "min_gap_top33": float((top[:-1] - top[1:]).min())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    n = write_token_counts(args.out)
    write_merge_cases(args.out)
    info = write_router_module(args.out)
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"token_counts: {n} sizes; router: {info}; {args.out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
