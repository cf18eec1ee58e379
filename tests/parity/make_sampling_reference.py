"""Record transformers' RepetitionPenaltyLogitsProcessor and MinPLogitsWarper on random logits.

Writes tests/fixtures/sampling/processors.json: per case, a logits row (vocabulary 64), the prompt
and generated token ids, the penalty and `min_p`, transformers' row after the repetition penalty
(which applies to every id in the prompt and the output, as vLLM's does), and the ids MinP keeps
from that row after a temperature. `crates/grain-engine/src/sampling_tests.rs` compares.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VOCAB = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(5)
    cases = []
    for i in range(24):
        logits = torch.randn(VOCAB, generator=gen, dtype=torch.float32) * 3.0
        prompt = torch.randint(0, VOCAB, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen)
        generated = torch.randint(0, VOCAB, (int(torch.randint(0, 8, (1,), generator=gen)),), generator=gen)
        penalty = [1.0, 1.3, 2.0, 0.7][i % 4]
        min_p = [0.0, 0.05, 0.2, 0.6][(i // 4) % 4]
        temperature = [1.0, 0.7, 1.5][i % 3]
        ids = torch.cat([prompt, generated]).unsqueeze(0)
        penalised = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.unsqueeze(0).clone())
        warped = TemperatureLogitsWarper(temperature)(ids, penalised.clone())
        if min_p > 0:
            warped = MinPLogitsWarper(min_p)(ids, warped)
        kept = [int(t) for t in torch.nonzero(warped[0] > float("-inf")).flatten()]
        cases.append(
            {
                "logits": [float(x) for x in logits],
                "prompt": [int(t) for t in prompt],
                "generated": [int(t) for t in generated],
                "repetition_penalty": penalty,
                "min_p": min_p,
                "temperature": temperature,
                "penalised": [float(x) for x in penalised[0]],
                "kept": kept,
            }
        )
    out = args.fixtures / "sampling"
    out.mkdir(parents=True, exist_ok=True)
    (out / "processors.json").write_text(json.dumps({"vocab": VOCAB, "cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases; kept per case: {[len(c['kept']) for c in cases]}")


if __name__ == "__main__":
    main()
