"""The official OpenAI Python SDK, unmodified, against `grain serve`.

Run (the lead's binary, or the mock-backed example server):

    cargo build --release -p grain            # or: cargo build -p grain-server --example mock_server
    GRAIN_BIN=target/release/grain .venv-e2e/bin/pytest tests/e2e -q

The assertions hold for any model Grain serves (the embedded tiny model with random weights,
the real AVG-LLaVA, the mock): they check the protocol, token accounting and determinism,
never the text itself.
"""

from __future__ import annotations

import base64
import signal
import struct
import threading
import time
import zlib

import openai
import pytest

from conftest import GrainServer, http


def png(width: int = 64, height: int = 48) -> bytes:
    """An RGB gradient PNG, written with zlib and struct (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 4 % 256, y * 5 % 256, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(detail: str = "auto", url: str | None = None) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the image."},
                {"type": "image_url", "image_url": {"url": url or data_url(png()), "detail": detail}},
            ],
        }
    ]


def details(usage) -> dict:
    """`usage.prompt_tokens_details` with Grain's extension fields, as a plain dict."""
    return usage.prompt_tokens_details.model_dump()


HELLO = [{"role": "user", "content": "Say hello."}]


def test_models_are_listed(client, model_id):
    ids = [m.id for m in client.models.list().data]
    assert model_id in ids
    assert client.models.retrieve(model_id).id == model_id


def test_non_streaming_completion(client, model_id):
    resp = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=8)
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streaming_matches_non_streaming(client, model_id):
    args = dict(model=model_id, messages=HELLO, max_tokens=10, temperature=0)
    full = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1, "every chunk carries the same id"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens


def test_image_by_data_url(client, model_id):
    raw = client.chat.completions.with_raw_response.create(
        model=model_id, messages=image_message(), max_tokens=4
    )
    resp = raw.parse()
    d = details(resp.usage)
    assert d["visual_tokens"] > 0
    assert len(d["granularity"]) == 1
    assert raw.headers["x-grain-granularity"] == str(d["granularity"][0])
    assert resp.usage.prompt_tokens > d["visual_tokens"], "text tokens come on top"


def test_detail_low_costs_fewer_prompt_tokens_than_high(client, model_id):
    low = client.chat.completions.create(model=model_id, messages=image_message("low"), max_tokens=2)
    high = client.chat.completions.create(model=model_id, messages=image_message("high"), max_tokens=2)
    assert low.usage.prompt_tokens < high.usage.prompt_tokens
    dl, dh = details(low.usage), details(high.usage)
    assert dl["visual_tokens"] < dh["visual_tokens"]
    assert dl["visual_tokens_full"] == dh["visual_tokens_full"] == dh["visual_tokens"]
    assert dl["granularity_source"] == dh["granularity_source"] == ["detail"]


def test_granularity_extension_via_extra_body(client, model_id, model_card):
    candidates = model_card["granularities"]
    seen = []
    for g in candidates:
        resp = client.chat.completions.create(
            model=model_id, messages=image_message("high"), max_tokens=2, extra_body={"granularity": g}
        )
        d = details(resp.usage)
        assert d["granularity"] == [g]
        assert d["granularity_source"] == ["request"]
        seen.append(d["visual_tokens"])
    assert seen == sorted(seen) and len(set(seen)) == len(seen), "finer granularity, more tokens"


def test_n_choices(client, model_id):
    resp = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=4, n=2, temperature=1, seed=7)
    assert [c.index for c in resp.choices] == [0, 1]


def test_seed_reproducibility(client, model_id):
    args = dict(model=model_id, messages=HELLO, max_tokens=12, temperature=1.0, seed=1234)
    first = client.chat.completions.create(**args).choices[0].message.content
    second = client.chat.completions.create(**args).choices[0].message.content
    assert first == second


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize(
    "url",
    [
        data_url(b"definitely not an image"),
        data_url(b"\x89PNG\r\n\x1a\n" + b"corrupt data, not a PNG body"),
        "data:image/png;base64,%%%not-base64%%%",
    ],
    ids=["not-an-image", "broken-png", "bad-base64"],
)
def test_broken_image_is_a_bad_request(client, model_id, url):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=image_message(url=url), max_tokens=2)
    assert err.value.code == "invalid_image"


def test_bookkeeping_fields_are_taken_and_change_nothing(client, model_id):
    args = dict(model=model_id, messages=HELLO, max_tokens=6, temperature=0)
    plain = client.chat.completions.create(**args)
    kept = client.chat.completions.create(
        **args, user="u-1", store=False, metadata={"team": "e2e"}, service_tier="auto",
        extra_body={"safety_identifier": "hash-1", "prompt_cache_key": "tenant-1"},
    )
    assert kept.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args, store=True)
    assert err.value.param == "store"


def test_unsupported_fields_are_refused_by_name(client, model_id):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=HELLO, functions=[tool["function"]])
    assert err.value.param == "functions"
    # Tools are taken; the deprecated `function_call` in a message is refused by name too.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, max_tokens=2, messages=[
            *HELLO, {"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}}])
    assert err.value.param == "messages[1].function_call"


def test_api_key_is_enforced():
    srv = GrainServer({"GRAIN_API_KEYS": "sk-e2e-secret-1"})
    try:
        model = http("GET", f"{srv.url}/health")  # probes need no key
        assert model[0] == 200
        with pytest.raises(openai.AuthenticationError):
            srv.client().models.list()
        with pytest.raises(openai.AuthenticationError):
            srv.client("sk-wrong").chat.completions.create(model="x", messages=HELLO)
        good = srv.client("sk-e2e-secret-1")
        model_id = good.models.list().data[0].id
        assert good.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2).choices
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_streams_then_exits_zero():
    srv = GrainServer()
    client = srv.client()
    model_id = client.models.list().data[0].id
    started = [threading.Event() for _ in range(3)]
    results: list[object] = [None] * 3

    def stream(i: int) -> None:
        try:
            finish = None
            # The streams must outlast the probes below: if they all ended first, the drain would
            # finish and the server close before the probe's request. 400 sampled tokens took the
            # embedded model well under half a second, and could meet EOS sooner. Greedy, it runs
            # all 2000 tokens (about 1 s), and a reader taking 1 ms a chunk fills the socket
            # buffers, so the server holds each stream about 2 s.
            for chunk in client.chat.completions.create(
                model=model_id, messages=HELLO, max_tokens=2000, temperature=0, stream=True
            ):
                time.sleep(0.001)
                if chunk.choices and chunk.choices[0].delta.content:
                    started[i].set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            results[i] = finish
        except Exception as e:  # reported by the assertion below
            results[i] = e
        finally:
            started[i].set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(60), "streams never started"
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while http("GET", f"{srv.url}/ready")[0] != 503:
            assert time.monotonic() < deadline, "/ready never turned 503"
            time.sleep(0.01)
        status, body = http("POST", f"{srv.url}/v1/chat/completions", {"model": model_id, "messages": HELLO})
        assert status == 503, body
        assert body["error"]["code"] == "shutting_down"
        for t in threads:
            t.join(120)
        assert all(r in ("stop", "length") for r in results), results
        assert srv.proc.wait(60) == 0, srv.log_tail()
    finally:
        srv.stop()


def test_a_repeated_image_is_served_from_the_prefix_cache(client, model_id):
    """The second request with the same picture and question reuses the KV of the image."""
    msgs = image_message("high", url=data_url(png(80, 60)))  # a size no other test sends
    first = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=2, temperature=0)
    visual = details(first.usage)["visual_tokens"]
    assert details(again.usage)["cached_tokens"] >= visual > details(first.usage)["cached_tokens"]
    assert again.choices[0].message.content == first.choices[0].message.content


def test_vllm_sampling_extensions(client, model_id):
    """`min_p` 1 keeps only the most likely token: sampling then equals greedy decoding.
    `repetition_penalty` is checked against transformers' processor in the engine's tests."""
    greedy = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=16, temperature=0)
    only_best = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=16, temperature=1.0, seed=9, extra_body={"min_p": 1.0}
    )
    assert only_best.choices[0].message.content == greedy.choices[0].message.content
    penalised = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=16, temperature=0, extra_body={"repetition_penalty": 1.5}
    )
    assert penalised.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=HELLO, extra_body={"repetition_penalty": 0})
    assert err.value.param == "repetition_penalty"
