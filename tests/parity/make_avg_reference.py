#!/usr/bin/env python3
"""Write end-to-end router fixtures for an AVG-layout checkpoint (e.g. `grain make-tiny --layout avg`).

  python tests/parity/make_avg_reference.py --model tests/fixtures/avg-tiny \
      [--out tests/fixtures/avg-ref/e2e] [--image-token-id -200]

Writes `<out>/images/*.png` (synthetic, deterministic, lossless) and `<out>/e2e.json`: for each
(image, prompt) case the prompt ids, the router logits and decision, and the visual token counts.
The pixels come from transformers' PIL LLaVA-NeXT processor; the CLIP tower is transformers'
CLIPVisionModel; the router is avg_router.py. See avg_README.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avg_checkpoint import IMAGE_TOKEN_SENTINEL, AvgModel, CheckpointError
from avg_io import write_json

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fixtures" / "avg-ref" / "e2e"
# (name, width, height): grids 2x2, 2x1, 3x1, 1x3, 2x2 with unpad cuts, and a tiny image.
IMAGES = [
    ("square_672", 672, 672),
    ("wide_1000x500", 1000, 500),
    ("strip_1008x336", 1008, 336),
    ("tall_300x1000", 300, 1000),
    ("photo_800x600", 800, 600),
    ("tiny_20x30", 20, 30),
]


def synthetic_image(index: int, width: int, height: int) -> Image.Image:
    """Smooth gradients plus a few discs: varied content that still compresses well as PNG."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    phase = 1.7 * index
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (u * (1 + index % 3)) + phase)
    g = v
    b = 0.5 + 0.5 * np.cos(2 * np.pi * (u + v) * (1 + index % 2) - phase)
    rgb = np.stack([r, g, b], axis=-1)
    rng = np.random.default_rng(index)
    for _ in range(3):
        cx, cy = rng.uniform(0, 1, 2)
        radius = rng.uniform(0.1, 0.3)
        color = rng.uniform(0, 1, 3)
        mask = (u - cx) ** 2 + (v - cy) ** 2 < radius**2
        rgb[mask] = color
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")


def prompts(vocab: int, image_token: int) -> list[tuple[str, list[int]]]:
    """Token-id prompts shaped like the vicuna_v1 template: bos, system text, image, question.

    Ids are drawn from [3, vocab) with a fixed seed (no tokenizer needed). Lengths cover fewer
    than 32 text tokens (zero-padding path), just over 32, and many; one repeats ids (score ties).
    """
    if vocab <= 3:
        raise CheckpointError(f"vocab_size {vocab} is too small for test prompts")
    rng = random.Random(7)

    def ids(count: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(count)]

    system = ids(24)
    return [
        ("short", [1, *ids(3), image_token, *ids(4)]),
        ("vicuna_like", [1, *system, image_token, *ids(12)]),
        ("long", [1, *system, image_token, *ids(60)]),
        ("repeats", [1, *([5, 6, 7] * 8), image_token, *([9] * 10), *ids(6)]),
    ]


def build_cases(model: AvgModel, out: Path, image_token: int, only: set[str] | None = None) -> list[dict]:
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    vocab = model.embed_tokens.shape[0]
    prompt_list = prompts(vocab, image_token)
    cases = []
    for index, (name, width, height) in enumerate(IMAGES):
        if only is not None and name not in only:
            continue
        path = image_dir / f"{name}.png"
        synthetic_image(index, width, height).save(path, optimize=True)
        image = Image.open(path)
        # Two prompts per image, rotating, so every prompt meets several grids.
        for offset in range(2):
            prompt_name, prompt_ids = prompt_list[(index + offset) % len(prompt_list)]
            result = model.run(image, prompt_ids, image_token)
            summary = result.summary(model.pinpoints, model.crop_px)
            cases.append(
                {
                    "name": f"{name}/{prompt_name}",
                    "image": f"images/{path.name}",
                    "prompt_ids": prompt_ids,
                    "image_token_id": image_token,
                    "text_ids": [i for i in prompt_ids if i != image_token],
                    **summary,
                }
            )
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--image-token-id", type=int, default=IMAGE_TOKEN_SENTINEL)
    parser.add_argument("--images", help="comma-separated subset of image names (default: all)")
    args = parser.parse_args(argv)
    only = None
    if args.images:
        only = set(args.images.split(","))
        unknown = only - {name for name, _, _ in IMAGES}
        if unknown:
            parser.error(f"unknown image names {sorted(unknown)}; known: {[n for n, _, _ in IMAGES]}")
    torch.set_grad_enabled(False)
    try:
        model = AvgModel.load(args.model)
        args.out.mkdir(parents=True, exist_ok=True)
        cases = build_cases(model, args.out, args.image_token_id, only)
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(
        args.out / "e2e.json",
        {
            "about": "AVG router end to end on the checkpoint named in `model`: PNG -> LLaVA-NeXT PIL "
            "processor -> CLIP hidden_states[select_layer] minus CLS -> projector -> router. "
            "Sizes are [width, height]; text_ids are prompt_ids without the image placeholder.",
            "model": str(args.model),
            "pinpoints": [list(p) for p in model.pinpoints],
            "granularities": model.granularities,
            "filtered_text_num": model.text_queries,
            "cases": cases,
        },
    )
    decisions = sorted({c["granularity"] for c in cases})
    print(f"wrote {len(cases)} cases to {args.out / 'e2e.json'}; granularities chosen: {decisions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
