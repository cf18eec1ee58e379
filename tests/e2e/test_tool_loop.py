"""`tool_choice: "auto"` and the tool loop (a call, its result sent back, an answer) through the
official `openai` SDK on the real tiny model.

Under "auto" an answer that opens with `{` (after whitespace) is a call, held to
`{"<name>": <arguments>}`, and any other answer is text. The tiny model's weights are random, so
the tests steer its first token with `logit_bias`: toward the tokens whose text opens with `{`,
or away from them. Arguments are judged by `jsonschema`, the prompt Grain builds by `/tokenize`
and `/detokenize`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
PARAMS = {
    "type": "object",
    "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"}},
    "required": ["unit", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Forecast.", "parameters": PARAMS}}
NOOP = {"type": "function", "function": {"name": "noop", "description": "Does nothing."}}
SCHEMAS = {"get_weather": PARAMS, "noop": {"type": "object", "additionalProperties": False}}


def post(server, path, body):
    req = urllib.request.Request(server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def brace_ids(server):
    """Every token whose text opens with `{` after whitespace (the vocabulary ends where
    `/detokenize` refuses an id)."""
    ids = []
    for i in range(1 << 20):
        status, out = post(server, "/detokenize", {"tokens": [i]})
        if status != 200:
            break
        if out["prompt"].lstrip(" \t\r\n").startswith("{"):
            ids.append(i)
    assert ids, "the vocabulary has a `{`"
    return ids


def biased(ids, value):
    return {str(i): value for i in ids}


def test_auto_answers_in_text_unless_the_answer_opens_with_a_brace(client, model_id, brace_ids):
    args = dict(model=model_id, messages=MESSAGES, tools=[WEATHER, NOOP], n=4, seed=7, temperature=1.0,
                max_tokens=12, logit_bias=biased(brace_ids, -100))
    resp = client.chat.completions.create(**args)  # tool_choice left out: "auto", as OpenAI's default
    for c in resp.choices:
        assert c.message.tool_calls is None and isinstance(c.message.content, str), c
        assert not c.message.content.lstrip().startswith("{")
        assert c.finish_reason in ("stop", "length")
    # Streamed: the same text as content deltas, no call.
    one = dict(args, n=1, tool_choice="auto")
    whole = client.chat.completions.create(**one).choices[0]
    text = ""
    for chunk in client.chat.completions.create(**one, stream=True):
        for choice in chunk.choices:
            assert not choice.delta.tool_calls
            text += choice.delta.content or ""
    assert text == whole.message.content


def test_auto_calls_when_the_answer_opens_with_a_brace(client, model_id, brace_ids):
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, tools=[WEATHER, NOOP], tool_choice="auto", n=6, seed=3,
        temperature=1.0, max_tokens=60, logit_bias=biased(brace_ids, 100),
    )
    finished = 0
    for c in resp.choices:
        calls = c.message.tool_calls
        assert calls is not None or c.finish_reason == "length", c  # cut before the name: text
        if c.finish_reason == "tool_calls":
            assert c.message.content is None and len(calls) == 1
            call = calls[0]
            assert call.id.startswith("call_") and call.type == "function"
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
            finished += 1
    assert finished, [(c.finish_reason, c.message) for c in resp.choices]


def test_an_auto_call_streams_as_the_whole_answer_gives_it(client, model_id, brace_ids):
    args = dict(model=model_id, messages=MESSAGES, tools=[NOOP], seed=1, temperature=0.8, max_tokens=40,
                logit_bias=biased(brace_ids, 100))
    whole = client.chat.completions.create(**args).choices[0]
    assert whole.finish_reason == "tool_calls", whole
    names, arguments, content, reason = [], "", "", None
    for chunk in client.chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                if call.function.name:
                    names.append(call.function.name)
                arguments += call.function.arguments or ""
            reason = choice.finish_reason or reason
    assert (names, arguments, content, reason) == (["noop"], whole.message.tool_calls[0].function.arguments, "",
                                                   "tool_calls")


def test_the_tool_loop_sends_the_result_back_and_gets_an_answer(server, client, model_id):
    first = client.chat.completions.create(
        model=model_id, messages=MESSAGES, tools=[WEATHER, NOOP], max_tokens=80, seed=2,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assistant = first.choices[0].message
    call = assistant.tool_calls[0]
    history = [*MESSAGES, assistant, {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    for choice in ("none", "auto"):
        answer = client.chat.completions.create(
            model=model_id, messages=history, tools=[WEATHER, NOOP], tool_choice=choice, max_tokens=6, seed=2
        )
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
        if choice == "none":
            assert answer.choices[0].message.tool_calls is None
    # The prompt Grain built: the tools offered before the user's text (the template's own system
    # prompt stays), the call as the model writes one, the result in a user turn.
    dumped = [*MESSAGES, assistant.model_dump(exclude_none=True), history[-1]]
    status, tok = post(server, "/tokenize", {"messages": dumped, "tools": [WEATHER, NOOP]})
    assert status == 200, tok
    status, out = post(server, "/detokenize", {"tokens": tok["tokens"]})
    assert status == 200, out
    prompt = out["prompt"]
    envelope = json.dumps({"get_weather": json.loads(call.function.arguments)}, separators=(",", ":"))
    for part in ("You can call these tools", '{"name":"noop","description":"Does nothing."}', envelope,
                 '{"tool_result":{"name":"get_weather","content":{"temp":21}}}'):
        assert part in prompt, (part, prompt)
    assert prompt.index("You can call") < prompt.index("What is the weather") < prompt.index(envelope) \
        < prompt.index("tool_result")
    status, without = post(server, "/tokenize", {"messages": MESSAGES})
    assert status == 200 and without["count"] < tok["count"]
    status, plain = post(server, "/detokenize", {"tokens": without["tokens"]})
    assert status == 200, plain
    before_user_text = plain["prompt"].split("What is the weather")[0]
    assert prompt.startswith(before_user_text + "You can call"), (before_user_text, prompt)


def test_a_result_must_answer_a_call_before_it(client, model_id):
    bad = [*MESSAGES, {"role": "assistant", "content": "Let me see."},
           {"role": "tool", "tool_call_id": "call_nope", "content": "21"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=bad, tools=[WEATHER], max_tokens=2)
    assert err.value.param == "messages[2].tool_call_id"
