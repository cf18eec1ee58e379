"""lm-eval's own `local-completions` client against a running `grain serve`: the log-likelihoods it
computes through `/v1/completions` (token ids, `echo`, `logprobs: 1`, `max_tokens: 1`) against
transformers' on the same checkpoint. A manual check, not part of the test suite (lm-eval pulls in
datasets, pandas, scikit-learn, ...):

    .venv-parity/bin/pip install --target /tmp/lmeval lm-eval tenacity
    target/release/grain serve --model tests/fixtures/hf-tiny --port 8123 &
    PYTHONPATH=/tmp/lmeval .venv-parity/bin/python tests/parity/lm_eval_loglikelihood.py --port 8123

Prints each pair's log-likelihood on both sides and fails on a difference over 1e-3 (the
tokens' scores themselves are checked to 1e-4 by `grain-backend/tests/prompt_logprobs.rs`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI
from transformers import LlavaNextForConditionalGeneration

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "hf-tiny"
PAIRS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("Question: what is red? Answer:", " a square"),
    ("Once upon a time", " there was"),
    ("word0 and then " * 20, "word1"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-dir", type=Path, default=MODEL)
    args = parser.parse_args()

    lm = LocalCompletionsAPI(
        base_url=f"http://127.0.0.1:{args.port}/v1/completions",
        model=args.model_dir.name,
        tokenizer_backend="huggingface",
        tokenizer=str(args.model_dir),
        num_concurrent=4,
        max_retries=1,
    )
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(PAIRS)]
    got = lm.loglikelihood(requests)

    model = LlavaNextForConditionalGeneration.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    worst = 0.0
    for (context, continuation), (ll, greedy) in zip(PAIRS, got):
        # The ids lm-eval sent: its own split of context and continuation.
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        ids = context_ids + continuation_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        positions = range(len(context_ids), len(ids))
        ref = sum(float(logprobs[p - 1, ids[p]]) for p in positions)
        ref_greedy = all(int(logprobs[p - 1].argmax()) == ids[p] for p in positions)
        worst = max(worst, abs(ll - ref))
        print(f"{context[:24]!r:28} grain {ll:.5f} (greedy {greedy})  transformers {ref:.5f} (greedy {ref_greedy})")
        assert abs(ll - ref) < 1e-3 and greedy == ref_greedy
    print(f"worst |Δ| {worst:.2e}: lm-eval's log-likelihoods through grain equal transformers'")


if __name__ == "__main__":
    main()
