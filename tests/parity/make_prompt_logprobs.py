"""Record transformers' log-probabilities of every prompt token on tests/fixtures/hf-tiny.

Writes tests/fixtures/prompt-logprobs/cases.json: per case, the prompt's token ids (tokenized by
tokenizers with the fixture's tokenizer.json, BOS included) and, for every token after the first,
the log-softmax of the previous position's logits at that token, and the five most likely tokens
with theirs. This is what `/v1/completions` with `echo` and `logprobs` reports for the prompt
(`crates/grain-backend/tests/prompt_logprobs.rs` compares). Text only: the model runs in f32 with
eager attention on CPU, one thread, so reruns give identical bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOP = 5
# Short and long prompts; the long one spans several 16-position KV blocks and, with a small
# step budget on the Grain side, several prefill chunks.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "USER: What is shown in this image? ASSISTANT: A red square on a white background.",
    " ".join(f"word{i} and then" for i in range(40)),
    "Hi",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()
    fixtures: Path = args.fixtures

    from transformers import LlavaNextForConditionalGeneration

    torch.set_num_threads(1)
    model_dir = fixtures / "hf-tiny"
    out_dir = fixtures / "prompt-logprobs"
    out_dir.mkdir(parents=True, exist_ok=True)
    model = LlavaNextForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    cases = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt).ids
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            token_logprobs = [None]
            top_ids, top_logprobs = [[]], [[]]
            for pos in range(len(ids) - 1):
                row = logprobs[pos]
                token_logprobs.append(float(row[ids[pos + 1]]))
                top = torch.topk(row, TOP)
                top_ids.append([int(i) for i in top.indices])
                top_logprobs.append([float(v) for v in top.values])
            cases.append(
                {
                    "prompt": prompt,
                    "ids": ids,
                    "token_logprobs": token_logprobs,
                    "top_ids": top_ids,
                    "top_logprobs": top_logprobs,
                }
            )
            print(f"{len(ids):4d} tokens, sum of logprobs {sum(token_logprobs[1:]):.4f}: {prompt[:40]!r}")

    payload = {"model": "hf-tiny", "top": TOP, "cases": cases}
    (out_dir / "cases.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
