"""HF transformers baseline for `grain bench`, on the same checkpoint and the same requests.

Reads a JSONL file of OpenAI chat requests (written by `grain bench --dump-workload`), runs each
through `LlavaNextForConditionalGeneration` (HF `llava_next` layout, float32, CPU, greedy, the
request's own `max_tokens`), one request at a time (`--batch-sizes 1`) and as left-padded batches
(`--batch-sizes 8`), and writes a JSON report whose `points[].summary` has the fields of
`grain bench --json` (TTFT/ITL/e2e percentiles, output tokens/s, requests/s, prompt and visual
tokens per request), so that benchmarks/summarize.py can put both side by side.

Timing: a logits processor records the wall time of every decoding step (it runs right after each
forward), so a request's TTFT is the first step's time from the start of its batch, its ITL the
gaps between steps, and its end-to-end latency the time of the step that produced its last token.
Batches run one after the other, as a closed loop with `batch size` requests in flight.

Usage:
  .venv-parity/bin/python benchmarks/hf_baseline.py --model DIR --dataset W.jsonl \
      --batch-sizes 1,8 --json benchmarks/results/hf.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LogitsProcessor, LogitsProcessorList


class StepTimer(LogitsProcessor):
    """Records the time of every generation step; leaves the scores alone."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def decode_image(url: str) -> Image.Image:
    if not url.startswith("data:") or ";base64," not in url:
        raise SystemExit(f"only base64 data: URLs are supported, got {url[:40]}...")
    data = base64.b64decode(url.split(";base64,", 1)[1])
    return Image.open(io.BytesIO(data)).convert("RGB")


def to_hf(request: dict) -> tuple[list[dict], list[Image.Image], int]:
    """OpenAI messages → (chat-template messages, images in order, max_tokens)."""
    messages, images = [], []
    for m in request["messages"]:
        content = m["content"]
        if isinstance(content, str):
            messages.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for p in content:
            if p["type"] == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif p["type"] == "image_url":
                images.append(decode_image(p["image_url"]["url"]))
                parts.append({"type": "image"})
            else:
                raise SystemExit(f"unsupported content part {p['type']!r}")
        messages.append({"role": m["role"], "content": parts})
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    if not max_tokens:
        raise SystemExit("every request needs max_tokens (grain bench --dump-workload writes it)")
    return messages, images, int(max_tokens)


def dist(values: list[float]) -> dict | None:
    """Same definition as grain bench: numpy's linear-interpolation percentiles."""
    v = np.array([x for x in values if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"count": int(v.size), "mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max())}


def summarize(records: list[dict], duration_s: float) -> dict:
    completion = sum(r["completion_tokens"] for r in records)
    prompt = sum(r["prompt_tokens"] for r in records)
    n = len(records)
    return {
        "completed": n,
        "failed": 0,
        "errors": {},
        "duration_s": duration_s,
        "requests_per_s": n / duration_s,
        "output_tokens_per_s": completion / duration_s,
        "total_tokens_per_s": (completion + prompt) / duration_s,
        "ttft_s": dist([r["ttft_s"] for r in records]),
        "itl_s": dist([g for r in records for g in r["itl_s"]]),
        "tpot_s": dist([(r["e2e_s"] - r["ttft_s"]) / (r["completion_tokens"] - 1) for r in records if r["completion_tokens"] > 1]),
        "e2e_s": dist([r["e2e_s"] for r in records]),
        "mean_prompt_tokens": prompt / n,
        "mean_visual_tokens": sum(r["visual_tokens"] for r in records) / n,
        "mean_visual_tokens_full": None,
        "mean_completion_tokens": completion / n,
        "total_completion_tokens": completion,
        "granularity_counts": {},
    }


def run_batch(model, processor, batch: list[tuple[list[dict], list[Image.Image], int]], first_index: int) -> list[dict]:
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m, _, _ in batch]
    images = [img for _, imgs, _ in batch for img in imgs]
    max_new = max(mt for _, _, mt in batch)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    timer = StepTimer()
    start = time.perf_counter()
    inputs = processor(images=images or None, text=texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new,
            do_sample=False,
            logits_processor=LogitsProcessorList([timer]),
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    image_id = model.config.image_token_index
    prompt_len = inputs["input_ids"].shape[1]
    records = []
    for row, (_, _, max_tokens) in enumerate(batch):
        generated = out[row, prompt_len:].tolist()
        n = 0
        for tok in generated[:max_tokens]:
            n += 1
            if tok in eos_ids:
                break
        steps = [t - start for t in timer.times[:n]]
        records.append({
            "index": first_index + row,
            "sent_at_s": 0.0,
            "e2e_s": steps[-1] if steps else time.perf_counter() - start,
            "ttft_s": steps[0] if steps else None,
            "itl_s": [b - a for a, b in zip(steps, steps[1:])],
            "completion_tokens": n,
            "prompt_tokens": int(inputs["attention_mask"][row].sum()),
            "visual_tokens": int((inputs["input_ids"][row] == image_id).sum()),
            "granularity": [],
            "error": None,
        })
    return records


def machine() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": cpu, "os": f"{sys.platform}-{platform.machine()}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint in the HF llava_next layout")
    ap.add_argument("--dataset", required=True, help="JSONL of chat requests (grain bench --dump-workload)")
    ap.add_argument("--num-requests", type=int, default=None, help="use the first N requests (default: all)")
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated; 1 = one request at a time")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(args.dataset) as f:
        requests = [json.loads(line) for line in f if line.strip()]
    if args.num_requests:
        requests = requests[: args.num_requests]
    work = [to_hf(r) for r in requests]

    # transformers 5 needs the processor's token-count settings spelled out for checkpoints that
    # ship only a preprocessor_config.json (these are the llava-v1.6 values).
    processor = AutoProcessor.from_pretrained(
        args.model, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1
    )
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.unk_token
    # transformers' default attention (SDPA on CPU): the baseline gets its fastest stock setting.
    model = LlavaNextForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()

    # Warm-up: one short generation so that lazy initialisation is not timed.
    run_batch(model, processor, [(work[0][0], work[0][1], 2)], -1)

    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    points = []
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        records = []
        t0 = time.perf_counter()
        for i in range(0, len(work), b):
            records.extend(run_batch(model, processor, work[i : i + b], i))
        duration = time.perf_counter() - t0
        s = summarize(records, duration)
        print(
            f"transformers batch={b}: {s['completed']} requests, {s['output_tokens_per_s']:.2f} output tok/s, "
            f"e2e p50 {s['e2e_s']['p50']:.3f} s, TTFT p50 {s['ttft_s']['p50']:.3f} s, "
            f"prompt {s['mean_prompt_tokens']:.0f} tok ({s['mean_visual_tokens']:.0f} visual)",
            flush=True,
        )
        points.append({"mode": "transformers", "load": {"kind": "batch", "value": b}, "summary": s, "requests": records})

    report = {
        "tool": "hf_baseline.py",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "started_at": started_at,
        "machine": machine(),
        "model": args.model,
        "label": "transformers",
        "settings": {**vars(args), "dtype": "float32", "attention": model.config._attn_implementation, "greedy": True},
        "points": points,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
