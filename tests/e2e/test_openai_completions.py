"""`/v1/completions` (legacy text completions) through the official `openai` SDK, unmodified."""

from __future__ import annotations

import openai
import pytest

PROMPT = "Once upon a time"


def test_text_completion(client, model_id):
    resp = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=8, temperature=0)
    assert resp.object == "text_completion"
    assert resp.id.startswith("cmpl-")
    choice = resp.choices[0]
    assert isinstance(choice.text, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_no_chat_template_is_applied(client, model_id):
    raw = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=1)
    chat = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": PROMPT}], max_tokens=1
    )
    assert raw.usage.prompt_tokens < chat.usage.prompt_tokens, "the template adds tokens"


def test_streaming_matches_non_streaming_with_echo(client, model_id):
    args = dict(model=model_id, prompt=PROMPT, max_tokens=10, temperature=0, echo=True)
    full = client.completions.create(**args)
    assert full.choices[0].text.startswith(PROMPT)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_logprobs_and_n(client, model_id):
    resp = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == logprob, "the sampled token is always listed"
        assert max(top.values()) == logprob, "greedy picks the most likely token"
    assert lp.text_offset == sorted(lp.text_offset)
    two = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=3, n=2, temperature=1, seed=5)
    assert [c.index for c in two.choices] == [0, 1]


def test_token_id_prompts_are_used_as_sent(client, model_id):
    """Token ids (one list, or a list of lists as evaluation harnesses send) are the prompt as is."""
    ids = [1, 40, 41, 42, 43]
    one = client.completions.create(model=model_id, prompt=ids, max_tokens=6, temperature=0)
    assert one.usage.prompt_tokens == len(ids), "no BOS or template added"
    two = client.completions.create(model=model_id, prompt=[ids, ids[:3]], max_tokens=6, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == one.choices[0].text
    assert two.usage.prompt_tokens == len(ids) + 3


def test_seeded_sampling_reproduces(client, model_id):
    args = dict(model=model_id, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=99)
    assert client.completions.create(**args).choices[0].text == client.completions.create(**args).choices[0].text


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(prompt=[1, 2, 10**6]), "prompt"),
        (dict(prompt=[1, 2], max_tokens=0), "max_tokens"),
        (dict(prompt=["a", "<image>"]), "prompt"),
        (dict(prompt=PROMPT, suffix="!"), "suffix"),
        (dict(prompt="<image> what is this?"), "prompt"),
    ],
    ids=["token-id-past-vocabulary", "nothing-to-generate-without-echo", "second-prompt-refused", "suffix",
         "image-placeholder"],
)
def test_what_grain_cannot_serve_is_a_bad_request(client, model_id, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=model_id, **{"max_tokens": 2, **kwargs})
    assert err.value.param == param


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT)


def test_readme_curl_example_runs(server):
    """The README's text-completion curl command, pointed at this server, gets a completion."""
    import json
    import re
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("curl") is None:
        pytest.skip("no curl")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Text completions", 1)[1]
    command = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    command = command.replace("http://127.0.0.1:8000", server.url)
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
    body = json.loads(out.stdout)
    assert body["object"] == "text_completion", body
    assert body["usage"]["completion_tokens"] >= 1


def test_a_repeated_prefix_is_served_from_the_prefix_cache(client, model_id):
    """Prompts that share their opening (a system prompt) reuse its KV: usage says how much."""
    system = {"role": "system", "content": "You are a careful assistant who answers in one short sentence. " * 3}
    counts = []
    for question in ("What is a cat?", "What is a dog?"):
        resp = client.chat.completions.create(
            model=model_id, messages=[system, {"role": "user", "content": question}], max_tokens=2, temperature=0
        )
        counts.append(resp.usage.prompt_tokens_details.cached_tokens)
        assert counts[-1] < resp.usage.prompt_tokens
    assert counts[1] >= 16 and counts[1] % 16 == 0, counts


def test_logit_bias_is_accepted_and_checked(client, model_id):
    ok = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=2, logit_bias={"5": -100})
    assert ok.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2, logit_bias={"99999999": 5}
        )
    assert err.value.param == "logit_bias"


def test_ignore_eos_and_min_tokens_extensions(client, model_id):
    """vLLM's extensions, as benchmark clients send them: every choice runs to max_tokens."""
    resp = client.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=20, n=2, temperature=1, seed=3,
        extra_body={"ignore_eos": True, "min_tokens": 20},
    )
    assert resp.usage.completion_tokens == 40
    assert [c.finish_reason for c in resp.choices] == ["length", "length"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={"min_tokens": 3}
        )
    assert err.value.param == "min_tokens"


def test_several_prompts_in_one_request(client, model_id):
    """A batch of prompts, as evaluation harnesses send it: choice j of prompt i is i*n + j."""
    prompts = [PROMPT, "The capital of France is"]
    both = client.completions.create(model=model_id, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    for i, p in enumerate(prompts):
        alone = client.completions.create(model=model_id, prompt=p, max_tokens=6, temperature=0)
        assert both.choices[2 * i].text == both.choices[2 * i + 1].text == alone.choices[0].text
    assert both.usage.prompt_tokens == sum(
        client.completions.create(model=model_id, prompt=p, max_tokens=1).usage.prompt_tokens for p in prompts
    )
