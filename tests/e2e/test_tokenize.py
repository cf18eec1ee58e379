"""`/tokenize` and `/detokenize` (vLLM's shapes) against a real server, with the openai SDK for the
completions their ids feed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

PROMPT = "Once upon a time"


def post(server, path, body):
    req = urllib.request.Request(
        server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_tokenized_ids_complete_like_their_text(server, client, model_id):
    status, tok = post(server, "/tokenize", {"model": model_id, "prompt": PROMPT})
    assert status == 200, tok
    assert tok["count"] == len(tok["tokens"]) > 0
    assert tok["max_model_len"] >= tok["count"]
    args = dict(model=model_id, max_tokens=8, temperature=0)
    by_text = client.completions.create(prompt=PROMPT, **args)
    by_ids = client.completions.create(prompt=tok["tokens"], **args)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == tok["count"]
    status, text = post(server, "/detokenize", {"tokens": tok["tokens"]})
    assert status == 200, text
    assert text["prompt"].endswith(PROMPT)


def test_chat_messages_count_as_a_chat_completion_does(server, client, model_id):
    messages = [{"role": "user", "content": "What is in the picture?"}]
    status, tok = post(server, "/tokenize", {"messages": messages})
    assert status == 200, tok
    resp = client.chat.completions.create(model=model_id, messages=messages, max_tokens=1)
    assert resp.usage.prompt_tokens == tok["count"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": []}, "prompt"),
        ("/tokenize", {"prompt": "see <image>"}, "prompt"),
        ("/detokenize", {"tokens": [1, 10**6]}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens"),
    ],
    ids=["nothing", "both", "image-placeholder", "past-vocabulary", "not-an-id"],
)
def test_bad_requests_are_openai_errors(server, path, body, param):
    status, err = post(server, path, body)
    assert status == 400
    assert err["error"]["param"] == param
