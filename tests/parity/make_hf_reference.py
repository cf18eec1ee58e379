"""Record transformers' LLaVA-NeXT processing and generation on tests/fixtures/hf-tiny.

Writes tests/fixtures/images/*.png (the inputs) and tests/fixtures/hf-tiny-ref/:
  cases.json               per case: prompt, ids, image-token count, AnyRes geometry, greedy ids
  case_<name>.safetensors  input_ids, last_logits, image_sizes (+ image_features, packed_features)
  crops_<name>.png         the processor's crops as uint8, base crop first (see README.md)

The processor is transformers' SLOW (PIL) LlavaNextImageProcessorPil, the model runs in f32 with
eager attention on CPU, one thread, so reruns give identical bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer

from synthetic_images import make_image, save_png

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
QUESTION = "What is shown in this image?"
NEW_TOKENS = 8
MIN_MARGIN = 1e-3
# (name, width, height, PIL mode); features are stored for the cases in FEATURE_CASES.
CASES = [
    ("square672", 672, 672, "RGB"),
    ("wide1000x500", 1000, 500, "RGB"),
    ("tall400x900", 400, 900, "RGB"),
    ("tiny20x30", 20, 30, "RGB"),
    ("odd337x211", 337, 211, "RGB"),
    ("strip1500x120", 1500, 120, "RGB"),
    ("pole90x1000", 90, 1000, "RGB"),
    ("base336", 336, 336, "RGB"),
    ("rgba500x400", 500, 400, "RGBA"),
    ("gray300x600", 300, 600, "L"),
]
FEATURE_CASES = {"square672", "wide1000x500"}
# Visual token totals at full granularity from DESIGN.md (read off the original LLaVA-NeXT code);
# transformers must agree for these sizes or the fixtures would describe a different model.
DESIGN_TOTALS = {"square672": 2928, "wide1000x500": 1752}


def write_images(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, width, height, mode in CASES:
        path = out / f"{name}.png"
        save_png(make_image(width, height, mode), path)
        paths[name] = path
    return paths


def collapse_image_run(ids: list[int], image_id: int) -> tuple[list[int], int]:
    """Replace the single run of image tokens by one image token; return the run length too."""
    positions = [i for i, t in enumerate(ids) if t == image_id]
    assert positions, "no image token in the prompt"
    start, end = positions[0], positions[-1] + 1
    assert positions == list(range(start, end)), "image tokens are not one contiguous run"
    return ids[:start] + [image_id] + ids[end:], end - start


def sentencepiece_prompt_ids(sp: spm.SentencePieceProcessor, prompt: str, image_id: int) -> list[int]:
    """The original LLaVA `tokenizer_image_token`: BOS, then each chunk around <image> on its own."""
    ids = [sp.bos_id()]
    for i, chunk in enumerate(prompt.split("<image>")):
        if i:
            ids.append(image_id)
        ids.extend(sp.encode(chunk))
    return ids


def crops_to_uint8(pixel_values: torch.Tensor, mean, std) -> np.ndarray:
    """Invert the normalisation; assert the uint8 crops reproduce pixel_values to 1e-5."""
    mean32 = np.asarray(mean, dtype=np.float32)[:, None, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None, None]
    pv = pixel_values.numpy()
    u8 = np.clip(np.rint((pv * std32 + mean32) * 255.0), 0, 255).astype(np.uint8)
    # The processor's own arithmetic: u8 as f64 times 1/255, cast to f32, then (x - mean) / std in f32.
    rescaled = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    renorm = (rescaled - mean32) / std32
    err = float(np.abs(renorm - pv).max())
    assert err <= 1e-5, f"uint8 round trip error {err}"
    return u8, err


def greedy(model, inputs: dict, steps: int) -> tuple[list[int], list[float], torch.Tensor]:
    """Greedy decoding with a full forward per step (no KV cache), EOS ignored.

    Returns the new ids, each step's top-1 minus top-2 logit, and the logits after the prompt.
    """
    ids = inputs["input_ids"]
    new_ids, margins, first = [], [], None
    for _ in range(steps):
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            use_cache=False,
        )
        logits = out.logits[0, -1].float()
        if first is None:
            first = logits.clone()
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        next_id = int(top2.indices[0])
        new_ids.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return new_ids, margins, first


def check_generate_agrees(model, inputs: dict, greedy_ids: list[int]) -> None:
    """transformers' generate() (KV cache, EOS disabled) must pick the same tokens as `greedy`."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=len(greedy_ids),
        eos_token_id=None,
        bos_token_id=model.config.text_config.bos_token_id,
        pad_token_id=model.config.text_config.pad_token_id,
    )
    out = model.generate(**inputs, generation_config=config)
    generated = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert generated == greedy_ids, f"generate() gave {generated}, greedy loop {greedy_ids}"


def capture_features(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Projector output per crop (before packing) and the packed sequence as spliced in."""
    captured = {}

    def hook(_module, _args, output):
        captured["projected"] = output.detach().clone()

    handle = model.model.multi_modal_projector.register_forward_hook(hook)
    try:
        out = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True
        )
    finally:
        handle.remove()
    packed = out.pooler_output[0].detach().clone()
    return captured["projected"], packed


def check_features_independently(model, inputs, projected: torch.Tensor, n_crops: int) -> None:
    """Recompute the projector input from all hidden states: layer -2 of the CLIP tower, CLS dropped."""
    pixel = inputs["pixel_values"][0, :n_crops]
    tower = model.model.vision_tower(pixel, output_hidden_states=True, return_dict=True)
    n_layers = model.config.vision_config.num_hidden_layers
    assert len(tower.hidden_states) == n_layers + 1  # embeddings (after pre_layrnorm) + each layer
    selected = tower.hidden_states[n_layers - 1][:, 1:]
    expected = model.model.multi_modal_projector(selected)
    assert torch.allclose(expected, projected, atol=1e-5, rtol=1e-5), "projector input is not layer -2"


def anyres_geometry(processor, height: int, width: int) -> dict:
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    pinpoints = processor.image_processor.image_grid_pinpoints
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    dummy = np.zeros((3, height, width), dtype=np.uint8)
    new_h, new_w = get_patch_output_size(dummy, (best_h, best_w), input_data_format=ChannelDimension.FIRST)
    pad_x, pad_y = (best_w - new_w), (best_h - new_h)
    return {
        "best_resolution_hw": [best_h, best_w],
        "grid_rows_cols": [best_h // 336, best_w // 336],
        "resized_hw": [new_h, new_w],
        # np.pad placement in _pad_for_patching: the odd pixel goes to the bottom/right.
        "pad_top_bottom": [pad_y // 2, pad_y - pad_y // 2],
        "pad_left_right": [pad_x // 2, pad_x - pad_x // 2],
    }


def run_case(model, processor, tokenizer, sp, name, image_path, out_dir: Path) -> dict:
    image = Image.open(image_path)
    image.load()
    width, height = image.size
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    image_id = processor.image_token_id

    ids = inputs["input_ids"][0].tolist()
    prompt_ids, num_image_tokens = collapse_image_run(ids, image_id)
    # Two independent tokenizations of the same prompt must agree with the processor.
    fast_ids = tokenizer.encode(prompt).ids
    assert fast_ids == prompt_ids, f"{name}: tokenizer.json ids differ from the processor's"
    sp_ids = sentencepiece_prompt_ids(sp, prompt, image_id)
    assert sp_ids == prompt_ids, f"{name}: per-chunk sentencepiece ids differ from the processor's"

    geometry = anyres_geometry(processor, height, width)
    rows, cols = geometry["grid_rows_cols"]
    n_crops = 1 + rows * cols
    assert inputs["image_sizes"][0].tolist() == [height, width]

    pv = inputs["pixel_values"][0, :n_crops]
    assert pv.shape == (n_crops, 3, 336, 336), pv.shape
    u8, roundtrip_err = crops_to_uint8(
        pv, processor.image_processor.image_mean, processor.image_processor.image_std
    )
    strip = np.concatenate(list(u8.transpose(0, 2, 3, 1)), axis=0)  # (n_crops*336, 336, 3)
    save_png(Image.fromarray(strip, mode="RGB"), out_dir / f"crops_{name}.png")

    projected, packed = capture_features(model, inputs)
    assert projected.shape == (n_crops, 576, model.config.text_config.hidden_size), projected.shape
    assert packed.shape[0] == num_image_tokens, (packed.shape, num_image_tokens)
    check_features_independently(model, inputs, projected, n_crops)
    if name in DESIGN_TOTALS:
        assert num_image_tokens == DESIGN_TOTALS[name], (name, num_image_tokens)

    greedy_ids, margins, last_logits = greedy(model, inputs, NEW_TOKENS)
    check_generate_agrees(model, inputs, greedy_ids)
    tensors = {
        "input_ids": inputs["input_ids"].to(torch.int64).contiguous(),
        "last_logits": last_logits.to(torch.float32).contiguous(),
        "image_sizes": inputs["image_sizes"].to(torch.int64).contiguous(),
    }
    if name in FEATURE_CASES:
        tensors["image_features"] = projected.to(torch.float32).contiguous()
        tensors["packed_features"] = packed.to(torch.float32).contiguous()
    save_file(tensors, str(out_dir / f"case_{name}.safetensors"), metadata={"case": name})

    unpadded_rows = num_image_tokens - 576
    return {
        "name": name,
        "image": f"images/{image_path.name}",
        "mode": image.mode,
        "width": width,
        "height": height,
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "num_image_tokens": num_image_tokens,
        "image_token_id": image_id,
        "input_len": len(ids),
        "n_crops": n_crops,
        **geometry,
        "unpadded_tokens_incl_newlines": unpadded_rows,
        "crops_png": f"hf-tiny-ref/crops_{name}.png",
        "crops_roundtrip_max_abs_err": roundtrip_err,
        "greedy_ids": greedy_ids,
        "greedy_margins": margins,
        "min_margin": min(margins),
        "last_logits_argmax": int(torch.argmax(last_logits)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()
    fixtures: Path = args.fixtures

    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model_dir = fixtures / "hf-tiny"
    out_dir = fixtures / "hf-tiny-ref"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    images_dir = fixtures / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    image_paths = write_images(images_dir)

    processor = AutoProcessor.from_pretrained(model_dir, backend="pil")
    assert type(processor.image_processor).__name__ == "LlavaNextImageProcessorPil"
    model = LlavaNextForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))

    cases = []
    with torch.no_grad():
        for name, *_ in CASES:
            case = run_case(model, processor, tokenizer, sp, name, image_paths[name], out_dir)
            cases.append(case)
            print(
                f"{name:14s} {case['width']}x{case['height']} best={case['best_resolution_hw']} "
                f"crops={case['n_crops']} image_tokens={case['num_image_tokens']} "
                f"greedy={case['greedy_ids']} min_margin={case['min_margin']:.4f}"
            )
    min_margin = min(c["min_margin"] for c in cases)
    print(f"minimum top-1/top-2 margin over all cases and steps: {min_margin:.6f}")
    assert min_margin > MIN_MARGIN, "greedy choices too close; change LM_HEAD_GAIN in make_hf_tiny.py"

    payload = {
        "model": "hf-tiny",
        "question": QUESTION,
        "new_tokens": NEW_TOKENS,
        "image_token_id": processor.image_token_id,
        "image_mean": list(processor.image_processor.image_mean),
        "image_std": list(processor.image_processor.image_std),
        "min_margin": min_margin,
        "feature_cases": sorted(FEATURE_CASES),
        "cases": cases,
    }
    (out_dir / "cases.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
