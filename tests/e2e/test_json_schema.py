"""Structured outputs (`response_format: {"type": "json_schema"}`) through the official `openai`
SDK on the real tiny model. Its weights are random, so only the constraint makes it write the
schema's documents. Judged by independent references: the `jsonschema` package validates every
finished choice, and the SDK's own `chat.completions.parse` turns one into a pydantic model.
(A random model rarely closes a free string, so the schemas that must finish have none; free
strings are checked as prefixes.)"""

from __future__ import annotations

import enum
import json
import re
from typing import Optional

import jsonschema
import openai
import pydantic
import pytest
from json_prefix import is_prefix_of_json

MESSAGES = [{"role": "user", "content": "Describe a cat."}]

SCHEMA = {
    "$defs": {
        "Toy": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["ball", "mouse", "string"]},
                "squeaks": {"type": "boolean"},
            },
            "required": ["kind", "squeaks"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {
        "name": {"enum": ["Tom", "Kitty", "Felix"]},
        "age": {"type": "integer"},
        "indoor": {"type": "boolean"},
        "color": {"enum": ["black", "white", "tabby", None]},
        "toys": {"type": "array", "items": {"$ref": "#/$defs/Toy"}, "maxItems": 2},
        "weight": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "vet": {"type": "object"},
    },
    "required": ["name", "age", "indoor", "color", "toys", "weight"],
    "additionalProperties": False,
}


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "cat", "schema": schema, "strict": True}}


def test_finished_choices_validate_against_the_schema(client, model_id):
    resp = client.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        response_format=response_format(SCHEMA),
        n=8,
        temperature=1.0,
        seed=5,
        max_tokens=200,
    )
    stopped = [c for c in resp.choices if c.finish_reason == "stop"]
    assert stopped, [c.message.content for c in resp.choices]
    for c in stopped:
        doc = json.loads(c.message.content)
        jsonschema.validate(doc, SCHEMA)
        # Properties come in the schema's order.
        order = list(SCHEMA["properties"])
        assert [order.index(k) for k in doc] == sorted(order.index(k) for k in doc), c.message.content
    for c in resp.choices:
        assert c.message.content.lstrip().startswith("{"), c.message.content
        assert is_prefix_of_json(c.message.content), c.message.content


def test_free_strings_are_json_strings_cut_or_closed(client, model_id):
    schema = {
        "type": "object",
        "properties": {"note": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["note", "n"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, response_format=response_format(schema), n=4, seed=1, max_tokens=30
    )
    for c in resp.choices:
        text = c.message.content
        assert text.lstrip().startswith("{") and '"note"' in text, text
        assert is_prefix_of_json(text), text
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(text), schema)


class Mood(str, enum.Enum):
    calm = "calm"
    playful = "playful"


class Owner(pydantic.BaseModel):
    adult: bool
    pets: int


class Cat(pydantic.BaseModel):
    mood: Mood
    owner: Optional[Owner]
    lives: list[int] = pydantic.Field(max_length=3)
    hungry: bool


def parsed_over_seeds(client, model_id, model, seeds, temperature):
    """`chat.completions.parse` with `model` once per seed: the parsed answers of the seeds that
    finished (one cut by max_tokens is a prefix, which the first test checks)."""
    parsed = []
    for seed in range(seeds):
        try:
            resp = client.chat.completions.parse(
                model=model_id, messages=MESSAGES, response_format=model, temperature=temperature, seed=seed,
                max_tokens=200,
            )
        except openai.LengthFinishReasonError:
            continue
        parsed.append(resp.choices[0].message.parsed)
    assert parsed, "no seed finished within max_tokens"
    return parsed


def test_the_sdks_parse_returns_the_pydantic_model(client, model_id):
    """`chat.completions.parse` sends the strict schema pydantic writes (refs, anyOf with null,
    enums) and validates the answer with pydantic."""
    for cat in parsed_over_seeds(client, model_id, Cat, 4, 0.7):
        assert isinstance(cat, Cat) and len(cat.lives) <= 3


class Rating(pydantic.BaseModel):
    stars: int = pydantic.Field(ge=1, le=5)
    votes: int = pydantic.Field(gt=-3, lt=40)
    confidence: float = pydantic.Field(ge=0, le=1)
    stride: int = pydantic.Field(multiple_of=5, ge=-50)
    tens: float = pydantic.Field(multiple_of=10, gt=-100, lt=100)
    halves: float = pydantic.Field(multiple_of=0.5, ge=0, le=5)
    best: bool


def test_bounded_numbers_from_pydantic_stay_in_range(client, model_id):
    """`Field(ge=…, le=…)` on an int or a float, `Field(multiple_of=…)` on an int and a whole or a
    fractional one on a float: the strict schema's `minimum` / `exclusiveMaximum` / `multipleOf` are enforced
    digit by digit, and pydantic's own validation in `parse` is the judge."""
    for rating in parsed_over_seeds(client, model_id, Rating, 6, 1.0):
        assert isinstance(rating, Rating) and 1 <= rating.stars <= 5 and -3 < rating.votes < 40
        assert 0 <= rating.confidence <= 1 and rating.stride % 5 == 0 and rating.stride >= -50
        assert rating.tens % 10 == 0 and -100 < rating.tens < 100
        assert (2 * rating.halves).is_integer() and 0 <= rating.halves <= 5


class Pet(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=2, max_length=6)
    nickname: Optional[str] = pydantic.Field(max_length=1)
    motto: str = pydantic.Field(min_length=5)
    tag: str = pydantic.Field(pattern=r"^[A-Z]{2}-\d{3}$")
    indoor: bool


def test_bounded_strings_from_pydantic_keep_their_lengths_and_patterns(client, model_id):
    """`Field(min_length=…, max_length=…, pattern=…)` on a `str`: the strict schema's
    `minLength` / `maxLength` hold in code points (no character past the maximum, no closing
    quote before the minimum) and its `pattern` through a DFA of the decoded text; pydantic's own
    validation in `parse` is the judge."""
    for pet in parsed_over_seeds(client, model_id, Pet, 6, 1.0):
        assert isinstance(pet, Pet) and 2 <= len(pet.name) <= 6 and len(pet.motto) >= 5
        assert pet.nickname is None or len(pet.nickname) <= 1
        assert re.fullmatch(r"[A-Z]{2}-\d{3}", pet.tag), pet.tag


def test_streamed_document_equals_the_whole_answer(client, model_id):
    args = dict(
        model=model_id, messages=MESSAGES, response_format=response_format(SCHEMA), temperature=0.8, seed=2,
        max_tokens=120,
    )
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = client.chat.completions.create(**args, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


LOOSE = {
    "type": "object",
    "properties": {
        "name": {"enum": ["Tom", "Kitty"], "maxLength": 3},
        "age": {"type": "integer", "minimum": 0, "maximum": 20},
        "indoor": {"type": "boolean"},
    },
    "required": ["name", "age", "indoor"],
    "additionalProperties": False,
}


def test_a_non_strict_schema_holds_the_structure_and_leaves_narrowing_keywords(client, model_id):
    """OpenAI's `strict: false` (its default) promises no more than the structure: keywords that
    only narrow a value (`minimum`, `maxLength`, …) are taken but not enforced. The same schema
    with `strict: true` is refused by keyword."""
    loose = {"type": "json_schema", "json_schema": {"name": "cat", "schema": LOOSE}}
    resp = client.chat.completions.create(
        model=model_id, messages=MESSAGES, response_format=loose, n=8, seed=4, temperature=1.0, max_tokens=160
    )
    structure = json.loads(json.dumps(LOOSE))
    for prop in structure["properties"].values():
        for kw in ("minimum", "maximum", "maxLength"):
            prop.pop(kw, None)
    finished = [c for c in resp.choices if c.finish_reason == "stop"]
    assert finished, [c.message.content for c in resp.choices]
    for c in finished:
        jsonschema.validate(json.loads(c.message.content), structure)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model_id, messages=MESSAGES, response_format=response_format(LOOSE), max_tokens=5
        )
    assert "maxLength" in err.value.message or "minimum" in err.value.message


@pytest.mark.parametrize(
    "schema, says",
    [
        ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 1e-30}}}, "multipleOf"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "a(?=b)"}}}, "pattern"),
        ({"type": "array", "items": {"type": "integer"}}, "root must be an object"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}, "no such definition"),
    ],
)
def test_schemas_it_cannot_enforce_are_refused_by_name(client, model_id, schema, says):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model_id, messages=MESSAGES, response_format=response_format(schema), max_tokens=5
        )
    assert err.value.param == "response_format.json_schema.schema"
    assert says in err.value.message
    # The server keeps serving.
    assert client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=2).choices
