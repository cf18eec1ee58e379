"""Load an AVG-LLaVA ("avg" layout) checkpoint and run image -> router end to end.

Only the parts the router needs are loaded: `embed_tokens`, the CLIP tower, the projector,
`image_newline` and `model.router.*`. The LM layers are never touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from avg_anyres import (
    DEFAULT_GRANULARITIES,
    grid_shape,
    merge,
    parse_pinpoints,
    pool,
    select_best_resolution,
    token_total,
)
from avg_router import GranularityRouter, RouterTrace

VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
EMBED_KEY = "model.embed_tokens.weight"
NEWLINE_KEY = "model.image_newline"
ROUTER_PREFIX = "model.router."
# The original LLaVA code's placeholder id for an image in `input_ids`.
IMAGE_TOKEN_SENTINEL = -200
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class CheckpointError(ValueError):
    """The checkpoint directory does not hold what the reference needs."""


def load_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")
    return [single]


def load_tensors(model_dir: Path, wanted) -> dict[str, torch.Tensor]:
    """Tensors whose name satisfies `wanted(name)`, as float32 (lazily read, so 7B shards are fine)."""
    out = {}
    for path in _weight_files(Path(model_dir)):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                if wanted(name):
                    out[name] = handle.get_tensor(name).float()
    return out


@dataclass
class AvgModel:
    config: dict
    pinpoints: list[tuple[int, int]]
    granularities: list[int]
    text_queries: int
    select_layer: int
    drop_cls: bool
    vision: CLIPVisionModel
    projector: list[tuple[torch.Tensor, torch.Tensor]]
    embed_tokens: torch.Tensor
    newline: torch.Tensor
    router: GranularityRouter

    @classmethod
    def load(cls, model_dir: Path) -> AvgModel:
        model_dir = Path(model_dir)
        config = load_config(model_dir)
        if not config.get("router_select", False):
            raise CheckpointError("config.json has no `router_select: true`: not an AVG checkpoint")
        if "vision_config" not in config:
            raise CheckpointError("config.json has no `vision_config` object")
        prefixes = (VISION_PREFIX, PROJECTOR_PREFIX, ROUTER_PREFIX)
        tensors = load_tensors(model_dir, lambda n: n.startswith(prefixes) or n in (EMBED_KEY, NEWLINE_KEY))
        for key in (EMBED_KEY, NEWLINE_KEY):
            if key not in tensors:
                raise CheckpointError(f"missing tensor {key}")
        granularities = list(config.get("vis_token_granularity", DEFAULT_GRANULARITIES))
        text_queries = int(config.get("filtered_text_num", 32))
        select = config.get("mm_vision_select_feature", "patch")
        if select not in ("patch", "cls_patch"):
            raise CheckpointError(f"unknown mm_vision_select_feature {select!r}")
        return cls(
            config=config,
            pinpoints=parse_pinpoints(config.get("image_grid_pinpoints")),
            granularities=granularities,
            text_queries=text_queries,
            select_layer=int(config.get("mm_vision_select_layer", -2)),
            drop_cls=select == "patch",
            vision=_build_vision(config["vision_config"], tensors),
            projector=_projector(config.get("mm_projector_type", "mlp2x_gelu"), tensors),
            embed_tokens=tensors[EMBED_KEY],
            newline=tensors[NEWLINE_KEY],
            router=GranularityRouter.from_tensors(tensors, granularities, text_queries, ROUTER_PREFIX),
        )

    @property
    def crop_px(self) -> int:
        return int(self.vision.config.image_size)

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """(n_crops, 3, 336, 336) from transformers' PIL LLaVA-NeXT processor.

        transformers reads pinpoints as [height, width]; the original code reads them as
        [width, height]. Swapping each pair keeps the original meaning and the list order, which
        decides exact ties (e.g. 336x672 vs 672x336 for small square images).
        """
        px = self.crop_px
        processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": px},
            crop_size={"height": px, "width": px},
            image_grid_pinpoints=[[h, w] for (w, h) in self.pinpoints],
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
            do_pad=False,
        )
        out = processor(images=image.convert("RGB"), return_tensors="pt")
        pixels = out["pixel_values"][0].float()
        grid_w, grid_h = grid_shape(image.size, self.pinpoints, px)
        if pixels.shape[0] != 1 + grid_w * grid_h:
            raise CheckpointError(f"processor made {pixels.shape[0]} crops, expected {1 + grid_w * grid_h}")
        return pixels

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n_crops, 576, D): CLIP hidden state `select_layer`, CLS dropped, then the projector."""
        out = self.vision(pixel_values=pixels, output_hidden_states=True)
        hidden = out.hidden_states[self.select_layer]
        if self.drop_cls:
            hidden = hidden[:, 1:]
        for i, (weight, bias) in enumerate(self.projector):
            if i > 0:
                hidden = F.gelu(hidden)
            hidden = F.linear(hidden, weight, bias)
        return hidden

    def text_embeds(self, prompt_ids: list[int], image_token_id: int) -> torch.Tensor:
        """embed_tokens rows of the prompt with every image placeholder removed."""
        if image_token_id not in prompt_ids:
            raise CheckpointError(f"image token id {image_token_id} does not occur in the prompt ids")
        ids = [i for i in prompt_ids if i != image_token_id]
        vocab = self.embed_tokens.shape[0]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise CheckpointError(f"prompt ids out of the vocabulary (size {vocab}): {bad[:5]}")
        return self.embed_tokens[torch.tensor(ids, dtype=torch.long)]

    def run(self, image: Image.Image, prompt_ids: list[int], image_token_id: int) -> E2EResult:
        pixels = self.pixel_values(image)
        features = self.image_features(pixels)
        text = self.text_embeds(prompt_ids, image_token_id)
        trace = self.router(features, text)
        counts = {g: token_total(image.size, g, self.pinpoints, self.crop_px)[0] for g in self.granularities}
        chosen = self.granularities[trace.index]
        merged, _ = merge(pool(features, chosen), self.newline, image.size, self.pinpoints, self.crop_px)
        return E2EResult(image.size, pixels, features, text, trace, counts, chosen, merged)


@dataclass
class E2EResult:
    size: tuple[int, int]
    pixels: torch.Tensor
    features: torch.Tensor
    text: torch.Tensor
    trace: RouterTrace
    counts: dict[int, int]
    granularity: int
    merged: torch.Tensor

    def summary(self, pinpoints: list[tuple[int, int]], crop_px: int) -> dict:
        """Pixel-free, JSON-ready results."""
        best = select_best_resolution(self.size, pinpoints)
        scores = self.trace.text_scores
        return {
            "image_size": list(self.size),
            "best_resolution": list(best),
            "grid": [best[0] // crop_px, best[1] // crop_px],
            "n_crops": int(self.features.shape[0]),
            "router_logits": self.trace.router_logits.tolist(),
            "granularity_index": self.trace.index,
            "granularity": self.granularity,
            "token_counts": {str(g): n for g, n in self.counts.items()},
            "visual_tokens": int(self.merged.shape[0]),
            "text_tokens": int(scores.numel()),
            "text_order": self.trace.text_order.tolist(),
            "text_score_min_gap": self.text_score_min_gap(),
            # Cheap fingerprints that localise a mismatch to the tower+projector stage.
            "feature_mean_per_crop": self.features.mean(dim=(1, 2)).tolist(),
            "feature_norm_per_crop": self.features.flatten(1).norm(dim=1).tolist(),
        }

    def text_score_min_gap(self) -> float | None:
        """Smallest score gap between neighbouring *different* rows among the kept ones and the first
        dropped one. Repeated token ids tie exactly but cannot change the output; a tiny gap between
        different rows means a reimplementation may legitimately order them differently."""
        keep = self.trace.text_selected.shape[0]
        order = torch.sort(self.trace.text_scores, descending=True, stable=True).indices[: keep + 1]
        gaps = [
            float(self.trace.text_scores[a] - self.trace.text_scores[b])
            for a, b in zip(order[:-1], order[1:], strict=True)
            if not torch.equal(self.text[a], self.text[b])
        ]
        return min(gaps) if gaps else None


def _build_vision(vision_config: dict, tensors: dict[str, torch.Tensor]) -> CLIPVisionModel:
    keys = {
        k: vision_config[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "image_size",
            "patch_size",
            "hidden_act",
            "layer_norm_eps",
        )
        if k in vision_config
    }
    config = CLIPVisionConfig(**keys)
    config._attn_implementation = "eager"
    model = CLIPVisionModel(config).eval()
    # Real AVG checkpoints keep CLIPVisionModel's old `vision_model.` level under the prefix;
    # transformers 5's CLIPVisionModel has none, so drop it when present.
    own = {}
    for k, v in tensors.items():
        if k.startswith(VISION_PREFIX):
            rest = k[len(VISION_PREFIX) :]
            own[rest.removeprefix("vision_model.")] = v
    result = model.load_state_dict(own, strict=False)
    # position_ids is a buffer some exporters drop; every real weight must be present.
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"vision tower tensors: missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    return model


def _projector(kind: str, tensors: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Linear layers of `linear` or `mlp{N}x_gelu` (Linear, then (GELU, Linear) * (N-1))."""
    if kind == "linear":
        depth = 1
    else:
        match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
        if not match:
            raise CheckpointError(f"unsupported mm_projector_type {kind!r}")
        depth = int(match.group(1))
    layers = []
    for i in range(depth):
        w, b = f"{PROJECTOR_PREFIX}{2 * i}.weight", f"{PROJECTOR_PREFIX}{2 * i}.bias"
        if w not in tensors or b not in tensors:
            raise CheckpointError(f"missing projector tensor {w} or {b}")
        layers.append((tensors[w], tensors[b]))
    return layers
