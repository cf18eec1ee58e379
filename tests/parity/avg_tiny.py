"""Write a random AVG-layout checkpoint with the layout `grain make-tiny --layout avg` uses.

Used by avg_selftest.py (in a temp dir; never committed). Every tensor is f32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from avg_anyres import DEFAULT_GRANULARITIES
from avg_router import ROUTER_PREFIX, random_router

HIDDEN = 64
INTERMEDIATE = 160
LAYERS = 2
HEADS = 4
KV_HEADS = 2
VOCAB = 256
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def tiny_config() -> dict:
    return {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "mm_hidden_size": VISION["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_patch_merge_type": "spatial_unpad",
        "image_aspect_ratio": "anyres",
        # A string, as in the released config.json.
        "image_grid_pinpoints": "[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]",
        "router_select": True,
        "vis_token_granularity": list(DEFAULT_GRANULARITIES),
        "filtered_text_num": 32,
        "vision_config": dict(VISION),
    }


def write_checkpoint(directory: Path, seed: int = 0, router_seed: int | None = None) -> Path:
    """Create config.json + model.safetensors under `directory`; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    head_dim = HIDDEN // HEADS
    tensors = {
        "model.embed_tokens.weight": rand(VOCAB, HIDDEN, std=1.0),
        "model.norm.weight": 1.0 + rand(HIDDEN),
        "lm_head.weight": rand(VOCAB, HIDDEN),
        "model.mm_projector.0.weight": rand(HIDDEN, VISION["hidden_size"], std=0.3),
        "model.mm_projector.0.bias": rand(HIDDEN),
        "model.mm_projector.2.weight": rand(HIDDEN, HIDDEN, std=0.3),
        "model.mm_projector.2.bias": rand(HIDDEN),
        "model.image_newline": rand(HIDDEN, std=1.0),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "self_attn.q_proj.weight": rand(HEADS * head_dim, HIDDEN),
                p + "self_attn.k_proj.weight": rand(KV_HEADS * head_dim, HIDDEN),
                p + "self_attn.v_proj.weight": rand(KV_HEADS * head_dim, HIDDEN),
                p + "self_attn.o_proj.weight": rand(HIDDEN, HEADS * head_dim),
                p + "mlp.gate_proj.weight": rand(INTERMEDIATE, HIDDEN),
                p + "mlp.up_proj.weight": rand(INTERMEDIATE, HIDDEN),
                p + "mlp.down_proj.weight": rand(HIDDEN, INTERMEDIATE),
                p + "input_layernorm.weight": 1.0 + rand(HIDDEN),
                p + "post_attention_layernorm.weight": 1.0 + rand(HIDDEN),
            }
        )

    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(**VISION))
    for name, value in vision.state_dict().items():
        if name.endswith("position_ids"):
            continue  # a buffer, not a weight
        tensors[f"model.vision_tower.vision_tower.{name}"] = value.clone()

    router = random_router(HIDDEN, seed if router_seed is None else router_seed)
    for name, value in router.state_dict().items():
        tensors[f"{ROUTER_PREFIX}{name}"] = value.clone()

    tensors = {k: v.float().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(tiny_config(), indent=2) + "\n")
    return directory
