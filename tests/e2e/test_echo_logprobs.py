"""`echo` with `logprobs` on `/v1/completions` through the official `openai` SDK on the real tiny
model: the prompt's tokens are scored as decoding would score them, in the shape evaluation
harnesses (lm-eval's loglikelihood tasks) read. Transformers' own values are checked in
`crates/grain-backend/tests/prompt_logprobs.rs`."""

from __future__ import annotations

import json
import urllib.request

PROMPT = "Once upon a time there was a tiny model that scored its own prompts one token at a time"


def tokenize(server, model_id, text):
    body = json.dumps({"model": model_id, "prompt": text}).encode()
    req = urllib.request.Request(server.url + "/tokenize", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["tokens"]


def test_prompt_scores_agree_with_decoding(server, client, model_id):
    ids = tokenize(server, model_id, PROMPT)
    scored = client.completions.create(
        model=model_id, prompt=ids, echo=True, logprobs=5, max_tokens=0, temperature=0
    )
    choice = scored.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == len(ids)
    assert choice.finish_reason == "length"
    for k in (1, len(ids) // 2, len(ids) - 1):
        # Decoding after the first k tokens reports the distribution that scores token k.
        nxt = client.completions.create(model=model_id, prompt=ids[:k], max_tokens=1, logprobs=5, temperature=0)
        decoded = nxt.choices[0].logprobs.top_logprobs[0]
        scores = lp.top_logprobs[k]
        assert scores[lp.tokens[k]] == lp.token_logprobs[k], "the scored token is listed"
        assert abs(max(decoded.values()) - max(scores.values())) < 1e-4, k
        shared = set(decoded) & set(scores)
        assert len(shared) >= 4, (decoded, scores)
        for token in shared:
            assert abs(decoded[token] - scores[token]) < 1e-4, (k, token)


def test_loglikelihood_request_as_lm_eval_sends_it(client, model_id, server):
    """Context and continuation as token ids, `echo`, `logprobs: 1`, `max_tokens: 1`: the
    continuation's log-likelihood is the sum of `token_logprobs[ctxlen:-1]`."""
    ids = tokenize(server, model_id, PROMPT)
    ctxlen = len(ids) - 4
    resp = client.completions.create(
        model=model_id, prompt=[ids], echo=True, logprobs=1, max_tokens=1, temperature=0, seed=1234
    )
    lp = resp.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1, "prompt tokens, then the generated one"
    continuation = lp.token_logprobs[ctxlen:-1]
    assert len(continuation) == 4 and all(v <= 0 for v in continuation)
    for token, value, top in zip(lp.tokens[ctxlen:-1], continuation, lp.top_logprobs[ctxlen:-1]):
        assert top[token] == value
        assert max(top.values()) >= value
    # The generated token is greedy: its own alternative is the best.
    assert max(lp.top_logprobs[-1].values()) == lp.token_logprobs[-1]
    only = client.completions.create(model=model_id, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    for a, b in zip(only.choices[0].logprobs.token_logprobs[1:], lp.token_logprobs[1 : len(ids)]):
        assert abs(a - b) < 1e-5


def test_streamed_echo_scores_equal_the_whole_response(client, model_id):
    args = dict(model=model_id, prompt=PROMPT, echo=True, logprobs=2, max_tokens=6, temperature=0)
    full = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True))
    assert chunks[0].choices[0].text == PROMPT, "the echo comes first, with the prompt's scores"
    tokens, values = [], []
    for c in chunks:
        if c.choices and c.choices[0].logprobs:
            tokens += c.choices[0].logprobs.tokens
            values += c.choices[0].logprobs.token_logprobs
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert tokens == full.choices[0].logprobs.tokens
    assert values == full.choices[0].logprobs.token_logprobs
    assert len(tokens) == full.usage.prompt_tokens + full.usage.completion_tokens
