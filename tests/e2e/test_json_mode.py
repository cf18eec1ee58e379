"""JSON mode (`response_format: {"type": "json_object"}`) through the official `openai` SDK on the
real tiny model. Its weights are random, so without the grammar it never writes JSON; with it, a
choice that ends with `stop` is one JSON object and one cut by `max_tokens` is the start of one."""

from __future__ import annotations

import json

import pytest
from json_prefix import is_prefix_of_json

MESSAGES = [{"role": "user", "content": "Describe a cat as a JSON object."}]
JSON_OBJECT = {"type": "json_object"}


def test_choices_are_json_objects(client, model_id):
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, response_format=JSON_OBJECT, n=8, temperature=1.0, seed=1, max_tokens=40
    )
    stopped = [c for c in resp.choices if c.finish_reason == "stop"]
    assert stopped, [c.message.content for c in resp.choices]
    for c in stopped:
        assert isinstance(json.loads(c.message.content), dict), c.message.content
    for c in resp.choices:
        assert c.message.content.lstrip().startswith("{"), c.message.content
        assert is_prefix_of_json(c.message.content), c.message.content


def test_streamed_json_equals_the_whole_answer(client, model_id):
    args = dict(model=model_id, messages=MESSAGES, response_format=JSON_OBJECT, temperature=0.8, seed=3, max_tokens=40)
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = client.chat.completions.create(**args, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


@pytest.mark.parametrize("fmt", [{"type": "text"}, None])
def test_text_format_is_free_text(client, model_id, fmt):
    extra = {} if fmt is None else {"response_format": fmt}
    resp = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=12, temperature=0, **extra)
    assert resp.choices[0].message.content
