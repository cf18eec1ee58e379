#!/usr/bin/env python3
"""Independent PyTorch reference for AVG-LLaVA granularity machinery (see avg_README.md).

Library: `avg_anyres` (AnyRes geometry, pooling, merge, token counts), `avg_router` (router),
`avg_checkpoint` (checkpoint loading, CLIP tower + projector, end to end). This file is the CLI:

  counts --sizes 672x672,1000x500 [--pinpoints ...] [--granularities ...]
  router --model DIR --dump FILE           FILE: image_features (n,576,D), text_embeds (T,D)
  e2e    --model DIR --image PNG --prompt-ids 1,2,3 [--image-token-id -200] [--write FILE]
  merge  --features FILE --size WxH [--out FILE]   FILE: features (n,576,D), newline (D,)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from avg_anyres import (
    DEFAULT_GRANULARITIES,
    AnyResError,
    merge,
    parse_pinpoints,
    pool,
    select_best_resolution,
    token_total,
    unpad_scaled_length,
)
from avg_checkpoint import (
    IMAGE_TOKEN_SENTINEL,
    ROUTER_PREFIX,
    AvgModel,
    CheckpointError,
    load_config,
    load_tensors,
)
from avg_io import dumps, write_json
from avg_router import GranularityRouter, RouterError


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        size = (int(w), int(h))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 1000x500, got {text!r}") from exc
    if size[0] <= 0 or size[1] <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def parse_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def counts_table(sizes, pinpoints, granularities, crop_px: int = 336) -> list[dict]:
    rows = []
    for size in sizes:
        best = select_best_resolution(size, pinpoints)
        totals, noisy = {}, []
        for g in granularities:
            totals[str(g)], layout = token_total(size, g, pinpoints, crop_px)
            scaled = unpad_scaled_length(*layout.stitched, size)
            if int(scaled) != int(round(scaled, 7)):
                noisy.append(g)
        row = {
            "size": list(size),
            "best_resolution": list(best),
            "grid": [best[0] // crop_px, best[1] // crop_px],
            "totals": totals,
        }
        if noisy:
            # Granularities where f64 noise makes truncation differ from transformers' round-to-7.
            row["round7_differs"] = noisy
        rows.append(row)
    return rows


def cmd_counts(args) -> dict:
    return {
        "pinpoints": [list(p) for p in args.pinpoints],
        "granularities": args.granularities,
        "images": counts_table(args.sizes, args.pinpoints, args.granularities),
    }


def router_from_dump(model_dir: Path, dump: Path) -> dict:
    config = load_config(model_dir)
    granularities = list(config.get("vis_token_granularity", DEFAULT_GRANULARITIES))
    tensors = load_tensors(model_dir, lambda n: n.startswith(ROUTER_PREFIX))
    router = GranularityRouter.from_tensors(tensors, granularities, int(config.get("filtered_text_num", 32)))
    data = load_file(str(dump))
    for key in ("image_features", "text_embeds"):
        if key not in data:
            raise RouterError(f"{dump} has no tensor `{key}`")
    trace = router(data["image_features"].float(), data["text_embeds"].float())
    return {
        "router_logits": trace.router_logits.tolist(),
        "granularity_index": trace.index,
        "granularity": granularities[trace.index],
    }


def cmd_e2e(args) -> dict:
    model = AvgModel.load(args.model)
    image = Image.open(args.image)
    result = model.run(image, args.prompt_ids, args.image_token_id)
    summary = result.summary(model.pinpoints, model.crop_px)
    summary["image"] = str(args.image)
    summary["prompt_ids"] = args.prompt_ids
    summary["image_token_id"] = args.image_token_id
    if args.write:
        write_json(args.write, summary)
    return {k: summary[k] for k in ("router_logits", "granularity_index", "granularity", "token_counts", "grid")}


def cmd_merge(args) -> dict:
    data = load_file(str(args.features))
    for key in ("features", "newline"):
        if key not in data:
            raise AnyResError(f"{args.features} has no tensor `{key}`")
    features, newline = data["features"].float(), data["newline"].float()
    out, report = {}, {}
    for g in args.granularities:
        pooled = pool(features, g)
        merged, layout = merge(pooled, newline, args.size, args.pinpoints)
        out[f"merged.{g}"] = merged.contiguous()
        out[f"pooled.{g}"] = pooled.contiguous()
        report[str(g)] = {"tokens": merged.shape[0], "layout": None if layout is None else layout.__dict__}
    if args.out:
        save_file(out, str(args.out))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def geometry(p):
        p.add_argument("--pinpoints", type=parse_pinpoints, default=parse_pinpoints(None), help='"[[w,h],...]"')
        p.add_argument("--granularities", type=parse_ints, default=list(DEFAULT_GRANULARITIES))

    p = sub.add_parser("counts", help="visual token totals per granularity")
    p.add_argument("--sizes", required=True, type=lambda s: [parse_size(x) for x in s.split(",")])
    geometry(p)

    p = sub.add_parser("router", help="router on a dump of projected features + text embeddings")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--dump", required=True, type=Path)

    p = sub.add_parser("e2e", help="image + prompt ids -> CLIP -> projector -> router")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--prompt-ids", required=True, type=parse_ints)
    p.add_argument("--image-token-id", type=int, default=IMAGE_TOKEN_SENTINEL)
    p.add_argument("--write", type=Path, help="store pixel-free results as JSON")

    p = sub.add_parser("merge", help="pool + merge a features file at every granularity")
    p.add_argument("--features", required=True, type=Path)
    p.add_argument("--size", required=True, type=parse_size, help="original image WxH")
    p.add_argument("--out", type=Path, help="write merged.<G> / pooled.<G> tensors here")
    geometry(p)

    args = parser.parse_args(argv)
    try:
        if args.cmd == "counts":
            result = cmd_counts(args)
        elif args.cmd == "router":
            result = router_from_dump(args.model, args.dump)
        elif args.cmd == "e2e":
            result = cmd_e2e(args)
        else:
            result = cmd_merge(args)
    except (AnyResError, RouterError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(dumps(result), end="")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
