"""Build a tiny random LlavaNextForConditionalGeneration checkpoint with transformers.

Writes tests/fixtures/hf-tiny/ (one model.safetensors) and tests/fixtures/hf-tiny-sharded/ (the same
weights in several shards with model.safetensors.index.json), each with config.json,
generation_config.json, the processor files and the tokenizer from tests/fixtures/tokenizer/ plus the
added <image> and <pad> tokens. Requires make_tokenizer.py to have run.

Weights are re-initialised from one seeded generator so activations stay O(1) through every layer
(transformers' default init, std 0.02, makes every logit nearly equal and greedy decoding a coin toss).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import AddedToken

import make_tokenizer

SEED = 1234
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# Scale of lm_head relative to 1/sqrt(fan_in). With O(1) logits the gap between the two largest of
# ~600 logits is often below 1e-3 somewhere in 80 greedy steps; a larger spread keeps every greedy
# choice well separated so a reimplementation's float noise cannot flip it.
LM_HEAD_GAIN = 4.0
SHARD_SIZE = "300KB"

# vicuna_v1 as in the original LLaVA code (conv_vicuna_v1): system, then "ROLE: message" with " "
# after user turns and "</s>" after assistant turns; images render as "<image>\n" where they occur.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set system_message = messages[0]['content'] -%}"
    "{%- else -%}"
    "{%- set system_message = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    '{%- set system_message = "A chat between a curious user and an artificial intelligence assistant. '
    "The assistant gives helpful, detailed, and polite answers to the user's questions.\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- system_message + ' ' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' -}}"
    "{%- else -%}{{- raise_exception('Only system, user and assistant roles are supported') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- ' ' -}}{%- else -%}{{- '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def write_tokenizer(tokenizer_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the base tokenizer plus <image> and <pad> (special, after the sentencepiece vocab)."""
    fast = make_tokenizer.build_fast(tokenizer_dir / "tokenizer.model")
    base = fast.get_vocab_size()
    fast.add_special_tokens(
        [
            AddedToken(IMAGE_TOKEN, normalized=False, special=True),
            AddedToken(PAD_TOKEN, normalized=False, special=True),
        ]
    )
    ids = {IMAGE_TOKEN: fast.token_to_id(IMAGE_TOKEN), PAD_TOKEN: fast.token_to_id(PAD_TOKEN)}
    assert ids == {IMAGE_TOKEN: base, PAD_TOKEN: base + 1}, ids
    added = {0: make_tokenizer.UNK, 1: make_tokenizer.BOS, 2: make_tokenizer.EOS}
    added.update({i: t for t, i in ids.items()})
    make_tokenizer.save_tokenizer_files(fast, out_dir, added, {"pad_token": PAD_TOKEN})
    shutil.copy(tokenizer_dir / "tokenizer.model", out_dir / "tokenizer.model")
    return {"vocab_size": base + 2, **ids}


def build_config(vocab_size: int, image_token_id: int, pad_token_id: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=pad_token_id,
    )
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        image_seq_length=576,
    )


@torch.no_grad()
def reinit(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter an O(1)-activation init from one generator, in name order."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        shape = param.shape
        if name.endswith(
            ("embed_tokens.weight", "position_embedding.weight", "class_embedding", "image_newline")
        ):
            value = torch.randn(shape, generator=gen)
        elif param.ndim >= 2:
            fan_in = int(torch.tensor(shape[1:]).prod())
            gain = LM_HEAD_GAIN if name == "lm_head.weight" else 1.0
            value = torch.randn(shape, generator=gen) * (gain / fan_in**0.5)
        elif name.endswith(".bias"):
            value = torch.randn(shape, generator=gen) * 0.1
        elif name.endswith(".weight"):
            # 1-D weights are LayerNorm/RMSNorm scales.
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            raise ValueError(f"no init rule for parameter {name} {tuple(shape)}")
        param.copy_(value.to(param.dtype))


def build_processor(tokenizer_dir: Path):
    from transformers import AutoTokenizer, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        # CLIP prepends a CLS token; "default" drops it again, so a base crop costs 576 tokens.
        num_additional_image_tokens=1,
    )


def tensor_names(folder: Path) -> list[str]:
    names = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            names.extend(f.keys())
    return sorted(names)


def check_sharded_matches(single: Path, sharded: Path) -> int:
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2, f"expected >= 2 shards, got {shards}"
    with safe_open(single / "model.safetensors", "pt") as f:
        keys = f.keys()  # a safetensors handle is not iterable itself
        reference = {k: f.get_tensor(k) for k in keys}
    seen = set()
    for shard in shards:
        with safe_open(sharded / shard, "pt") as f:
            keys = f.keys()
            for key in keys:
                assert torch.equal(f.get_tensor(key), reference[key]), key
                assert index["weight_map"][key] == shard, key
                seen.add(key)
    assert seen == set(reference), "sharded copy lacks tensors"
    return len(shards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()
    fixtures: Path = args.fixtures

    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(SEED)
    out = fixtures / "hf-tiny"
    sharded = fixtures / "hf-tiny-sharded"
    for folder in (out, sharded):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp)
        ids = write_tokenizer(fixtures / "tokenizer", tok_dir)
        processor = build_processor(tok_dir)
        assert processor.image_token_id == ids[IMAGE_TOKEN], processor.image_token_id

        config = build_config(ids["vocab_size"], ids[IMAGE_TOKEN], ids[PAD_TOKEN])
        model = LlavaNextForConditionalGeneration(config).to(torch.float32).eval()
        reinit(model, SEED)
        model.generation_config.pad_token_id = ids[PAD_TOKEN]

        for folder, shard in ((out, None), (sharded, SHARD_SIZE)):
            kwargs = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(folder, safe_serialization=True, **kwargs)
            processor.save_pretrained(folder)
            # transformers 5 rewrites the tokenizer files in its own form (Metaspace pre-tokenizer,
            # no `legacy`, no BOS template); put back the LLaMA-form files that real checkpoints ship.
            write_tokenizer(fixtures / "tokenizer", folder)

    n_shards = check_sharded_matches(out, sharded)
    names = tensor_names(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"hf-tiny: {len(names)} tensors, {n_params} parameters, sharded copy in {n_shards} shards")
    print(f"  vocab {ids['vocab_size']}, <image> = {ids[IMAGE_TOKEN]}, <pad> = {ids[PAD_TOKEN]}")
    for name in names:
        print(f"  {name}")


if __name__ == "__main__":
    main()
