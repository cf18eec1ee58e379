"""Forced tool calls (`tools` with `tool_choice` naming a function, or `"required"`) through the
official `openai` SDK on the real tiny model (`"auto"` and the tool loop: test_tool_loop.py): the call's arguments are held to the
function's parameters, as the SDK's `pydantic_function_tool` and `parse` use them (instructor's
tools mode sends the same). Judged by the SDK's pydantic parsing and by `jsonschema`."""

from __future__ import annotations

import json
from typing import Optional

import jsonschema
import openai
import pydantic
import pytest

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]

PARAMS = {
    "type": "object",
    "properties": {
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "hourly": {"type": "boolean"},
    },
    "required": ["unit", "days", "hourly"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Forecast.", "parameters": PARAMS}}
OTHER = {"type": "function", "function": {"name": "noop"}}


def test_a_named_choice_calls_that_function_with_valid_arguments(client, model_id):
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, tools=[OTHER, WEATHER], n=6, seed=3, temperature=1.0, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    finished = 0
    ids = set()
    for c in resp.choices:
        msg = c.message
        assert msg.content is None and len(msg.tool_calls) == 1, msg
        call = msg.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather"
        assert call.id.startswith("call_")
        ids.add(call.id)
        assert c.finish_reason in ("stop", "length"), c.finish_reason  # OpenAI: `stop` for a named choice
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(call.function.arguments), PARAMS)
            finished += 1
    assert finished, [c.message.tool_calls[0].function.arguments for c in resp.choices]
    assert len(ids) == len(resp.choices), "each call has its own id"


def test_required_with_one_tool_finishes_with_tool_calls(client, model_id):
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, tools=[WEATHER], tool_choice="required", n=4, seed=1, max_tokens=80
    )
    stopped = [c for c in resp.choices if c.finish_reason == "tool_calls"]
    assert stopped, [c.finish_reason for c in resp.choices]
    for c in stopped:
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), PARAMS)


TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}, "required": ["zone"],
    "additionalProperties": False}}}


def test_required_with_several_tools_lets_the_model_pick_one(client, model_id):
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, tools=[WEATHER, TIME, OTHER], tool_choice="required", n=8, seed=2,
        temperature=1.0, max_tokens=80,
    )
    schemas = {"get_weather": PARAMS, "get_time": TIME["function"]["parameters"], "noop": None}
    stopped = [c for c in resp.choices if c.finish_reason == "tool_calls"]
    assert stopped, [c.finish_reason for c in resp.choices]
    for c in stopped:
        call = c.message.tool_calls[0]
        args = json.loads(call.function.arguments)
        if schemas[call.function.name] is None:
            assert args == {}, call
        else:
            jsonschema.validate(args, schemas[call.function.name])
    # Streamed, the call is named once the model has written the name, then its arguments follow.
    args = dict(model=model_id, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required", seed=4,
                temperature=0.8, max_tokens=60)
    whole = client.chat.completions.create(**args).choices[0]
    names, arguments = [], ""
    for chunk in client.chat.completions.create(**args, stream=True):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function.name:
                names.append(call.function.name)
            arguments += call.function.arguments or ""
    if whole.message.tool_calls:
        assert names == [whole.message.tool_calls[0].function.name]
        assert arguments == whole.message.tool_calls[0].function.arguments


def test_a_call_cut_before_its_name_ends_is_the_same_text_streamed_or_whole(client, model_id):
    args = dict(model=model_id, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required", seed=1,
                max_tokens=2)
    whole = client.chat.completions.create(**args).choices[0]
    assert whole.finish_reason == "length"
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True) if c.choices
    )
    if whole.message.tool_calls is None:
        assert whole.message.content == streamed
        assert whole.message.content.strip() in ("", "{") or whole.message.content.lstrip().startswith('{"')


class Unit(pydantic.BaseModel):
    celsius: bool


class Forecast(pydantic.BaseModel):
    days: int
    unit: Optional[Unit]
    tags: list[bool] = pydantic.Field(max_length=2)


def test_the_sdks_parse_fills_parsed_arguments(client, model_id):
    tool = openai.pydantic_function_tool(Forecast)
    parsed = []
    for seed in range(4):
        try:
            resp = client.chat.completions.parse(
                model=model_id, messages=MESSAGES, tools=[tool], seed=seed, max_tokens=100,
                tool_choice={"type": "function", "function": {"name": "Forecast"}},
            )
        except openai.LengthFinishReasonError:
            continue
        call = resp.choices[0].message.tool_calls[0]
        assert isinstance(call.function.parsed_arguments, Forecast), call
        parsed.append(call.function.parsed_arguments)
    assert parsed, "no seed finished within max_tokens"


def test_a_streamed_call_equals_the_whole_one(client, model_id):
    args = dict(
        model=model_id, messages=MESSAGES, tools=[WEATHER], tool_choice="required", seed=5, temperature=0.8,
        max_tokens=60,
    )
    whole = client.chat.completions.create(**args).choices[0]
    name, arguments, reason, ids = None, "", None, []
    for chunk in client.chat.completions.create(**args, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        assert not delta.content, delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.append(call.id)
                name = call.function.name
            arguments += call.function.arguments or ""
        reason = chunk.choices[0].finish_reason or reason
    assert len(ids) == 1 and name == "get_weather"
    assert arguments == whole.message.tool_calls[0].function.arguments
    assert reason == whole.finish_reason


def test_none_answers_in_text(client, model_id):
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, tools=[WEATHER], tool_choice="none", max_tokens=5, temperature=0
    )
    msg = resp.choices[0].message
    assert msg.tool_calls is None and msg.content


class Alarm(pydantic.BaseModel):
    unit: Unit
    loud: bool


def test_several_pydantic_tools_with_shared_definitions(client, model_id):
    """Both tools' `$defs` (the same `Unit`) move to the envelope's root; the SDK's `parse` fills
    the arguments of whichever function the model picked."""
    tools = [openai.pydantic_function_tool(Forecast), openai.pydantic_function_tool(Alarm)]
    assert "$defs" in tools[0]["function"]["parameters"] and "$defs" in tools[1]["function"]["parameters"]
    picked = {}
    for seed in range(6):
        try:
            resp = client.chat.completions.parse(
                model=model_id, messages=MESSAGES, tools=tools, tool_choice="required", seed=seed, max_tokens=100
            )
        except openai.LengthFinishReasonError:
            continue
        call = resp.choices[0].message.tool_calls[0]
        assert isinstance(call.function.parsed_arguments, {"Forecast": Forecast, "Alarm": Alarm}[call.function.name])
        picked[call.function.name] = picked.get(call.function.name, 0) + 1
    assert picked, "no seed finished within max_tokens"
