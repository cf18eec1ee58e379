"""Bad requests against the real server: each gets its 4xx with an OpenAI error body, while valid
requests run alongside in background threads and all succeed; afterwards the process is alive,
`/ready` answers 200, no request failed with a 5xx and the log holds no panic.

The server runs with limits tight enough to reach cheaply: 4 MiB bodies, 1 MiB images, a 2048
token context, at most 8 images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import pytest

import rel_payloads as p
from rel_harness import assert_openai_error
from rel_traffic import Traffic

MODEL = "grain-tiny"
MAX_BODY = 4 * 1024 * 1024
MAX_IMAGE = 1024 * 1024
CONTEXT = 2048
FLAGS = (
    "--max-body-bytes", str(MAX_BODY),
    "--max-image-bytes", str(MAX_IMAGE),
    "--max-model-len", str(CONTEXT),
    "--max-images-per-request", "8",
)


@dataclass(frozen=True)
class Case:
    name: str
    body: Callable[[], object] | None  # dict → JSON, bytes → sent as is, None → no body
    status: int = 400
    code: str | None = None
    method: str = "POST"
    path: str = "/v1/chat/completions"
    headers: tuple[tuple[str, str], ...] = ()


def edited(base: Callable[[], dict], fields: dict) -> Callable[[], dict]:
    """`base()` with `fields` replacing or adding top-level fields (None removes one)."""

    def build() -> dict:
        body = base()
        for k, v in fields.items():
            if v is None:
                body.pop(k, None)
            else:
                body[k] = v
        return body

    return build


def msg(**fields) -> Callable[[], dict]:
    """A valid chat request, edited by `fields`."""
    return edited(lambda: p.chat("Hello there.", max_tokens=4), fields)


def text(**fields) -> Callable[[], dict]:
    """A valid `/v1/completions` request, edited by `fields`."""
    return edited(lambda: {"model": MODEL, "prompt": "Hello there.", "max_tokens": 4}, fields)


def messages(*ms) -> Callable[[], dict]:
    return lambda: {"model": MODEL, "messages": list(ms), "max_tokens": 4}


def image(url_or_bytes, mime: str = "image/png", detail: str = "low", **fields) -> Callable[[], dict]:
    """A request with one image: a URL string, bytes (sent as a data URL) or a callable giving either."""

    def build() -> dict:
        data = url_or_bytes() if callable(url_or_bytes) else url_or_bytes
        url = data if isinstance(data, str) else p.data_url(data, mime)
        return p.chat([p.text_part("Describe the image."), p.image_part(url, detail)], **fields)

    return build


def raw(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def big_square_png() -> bytes:
    return p.png(672, 672)


VALID_PNG = p.png(40, 30)
USER = {"role": "user", "content": "Hello."}

CASES = [
    # --- HTTP and JSON ----------------------------------------------------------------------
    Case("malformed-json", raw(b'{"model": "grain-tiny", "messages": ['), code="invalid_json"),
    Case("empty-body", raw(b""), code="invalid_json"),
    Case("json-array-body", raw(b"[1, 2, 3]"), code="invalid_type"),
    Case("json-string-body", raw(b'"hello"'), code="invalid_type"),
    Case("json-null-body", raw(b"null"), code="invalid_type"),
    Case("trailing-garbage", raw(json.dumps(p.chat("hi")).encode() + b" trailing"), code="invalid_json"),
    Case("invalid-utf8", raw(b'{"model":"grain-tiny","messages":[{"role":"user","content":"\xff\xfe\xfd"}]}'),
         code="invalid_json"),
    Case("lone-surrogate-escape", raw(b'{"model":"grain-tiny","messages":[{"role":"user","content":"\\ud800"}]}'),
         code="invalid_json"),
    Case("nan-literal", raw(b'{"model":"grain-tiny","messages":[],"temperature":NaN}'), code="invalid_json"),
    Case("number-overflow", raw(b'{"model":"grain-tiny","messages":[],"temperature":1e999}'), code="invalid_json"),
    Case("deep-nesting-body", raw(b"[" * 100_000 + b"]" * 100_000), code="invalid_json"),
    Case("deep-nesting-field",
         raw(b'{"model":"grain-tiny","messages":[{"role":"user","content":"x"}],"user":'
             + b"[" * 5000 + b"]" * 5000 + b"}"), code="invalid_json"),
    Case("missing-model", msg(model=None), code="missing_required_parameter"),
    Case("missing-messages", msg(messages=None), code="missing_required_parameter"),
    Case("model-not-a-string", msg(model=42), code="invalid_type"),
    Case("messages-not-an-array", msg(messages="hello"), code="invalid_type"),
    Case("empty-messages", msg(messages=[]), code="invalid_value"),
    Case("unknown-role", messages({"role": "wizard", "content": "hi"}), code="invalid_value"),
    Case("tool-result-for-no-call", messages({"role": "tool", "content": "hi", "tool_call_id": "x"}),
         code="invalid_value"),
    Case("tool-result-without-id", messages(
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "x"}), code="invalid_value"),
    Case("malformed-past-tool-call", messages(
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}), code="invalid_value"),
    Case("message-without-role", messages({"content": "hi"})),
    Case("null-content", messages({"role": "user", "content": None}), code="invalid_value"),
    Case("numeric-content", messages({"role": "user", "content": 12}), code="invalid_value"),
    Case("empty-parts", messages({"role": "user", "content": []}), code="invalid_value"),
    Case("unknown-part-type", messages({"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}), code="invalid_value"),
    Case("text-part-without-text", messages({"role": "user", "content": [{"type": "text"}]}),
         code="invalid_value"),
    Case("image-part-without-url", messages({"role": "user", "content": [
        {"type": "image_url", "image_url": {"detail": "low"}}]}), code="invalid_value"),
    Case("unknown-top-level-field", msg(temprature=0.5), code="unknown_parameter"),
    Case("unsupported-openai-field", msg(functions=[{"name": "f"}]), code="unsupported_parameter"),
    Case("store-true", msg(store=True), code="invalid_value"),
    Case("metadata-not-strings", msg(metadata={"k": 1}), code="invalid_value"),
    Case("tools-auto-with-ignore-eos", msg(tools=[{"type": "function", "function": {"name": "f"}}],
                                           ignore_eos=True), code="invalid_value"),
    Case("tools-unknown-choice", msg(tools=[{"type": "function", "function": {"name": "f"}}],
                                     tool_choice={"type": "function", "function": {"name": "g"}}),
         code="invalid_value"),
    Case("tools-choice-without-tools", msg(tool_choice="required"), code="invalid_value"),
    Case("tools-duplicate-names", msg(tools=[{"type": "function", "function": {"name": "f"}}] * 2,
                                      tool_choice="required"), code="invalid_value"),
    Case("tools-bad-parameters-schema", msg(
        tools=[{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
            "type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}],
        tool_choice="required"), code="invalid_value"),
    Case("tools-unsupported-keyword-even-loose", msg(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}}}}]),
         code="invalid_value"),
    Case("tools-conflicting-defs", msg(
        tools=[{"type": "function", "function": {"name": n, "parameters": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"],
            "$defs": {"A": {"type": t}}}}} for n, t in (("f", "string"), ("g", "integer"))],
        tool_choice="required"), code="invalid_value"),
    Case("tools-with-json-format", msg(tools=[{"type": "function", "function": {"name": "f"}}],
                                       tool_choice="required", response_format={"type": "json_object"}),
         code="invalid_value"),
    Case("repetition-penalty-zero", msg(repetition_penalty=0), code="invalid_value"),
    Case("min-p-above-one", msg(min_p=1.5), code="invalid_value"),
    Case("min-p-a-string", msg(min_p="0.1"), code="invalid_type"),
    Case("stop-token-ids-negative", msg(stop_token_ids=[1, -5]), code="invalid_value"),
    Case("stop-token-ids-not-a-list", msg(stop_token_ids=7), code="invalid_type"),
    Case("response-format-json-schema-lookaround-pattern", msg(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "string",
                                                                                         "pattern": "a(?=b)"}}}}}),
         code="invalid_value"),
    Case("response-format-json-schema-no-name", msg(response_format={"type": "json_schema", "json_schema": {
        "schema": {"type": "object"}}}), code="missing_required_parameter"),
    Case("response-format-json-schema-root-array", msg(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array"}}}), code="invalid_value"),
    Case("response-format-json-schema-ref-loop", msg(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
                                "$defs": {"A": {"$ref": "#/$defs/A"}}}}}), code="invalid_value"),
    Case("response-format-unknown-type", msg(response_format={"type": "yaml"}), code="invalid_value"),
    Case("response-format-a-string", msg(response_format="json_object"), code="invalid_type"),
    Case("response-format-json-with-ignore-eos", msg(response_format={"type": "json_object"}, ignore_eos=True),
         code="invalid_value"),
    Case("unknown-message-field", messages({"role": "user", "content": "hi", "mood": "happy"}),
         code="unknown_parameter"),
    Case("image-in-assistant-message", messages(
        {"role": "assistant", "content": [p.image_part(p.data_url(VALID_PNG))]}, USER), code="invalid_value"),
    Case("image-placeholder-in-text", msg(messages=[{"role": "user", "content": "look: <image>"}]),
         code="invalid_value"),
    Case("body-over-limit", lambda: p.chat("a" * (MAX_BODY + 1024)), status=413, code="payload_too_large"),
    Case("unknown-model", msg(model="gpt-17"), status=404, code="model_not_found"),
    Case("empty-model", msg(model="  "), code="invalid_value"),
    # --- out-of-range parameters ------------------------------------------------------------
    Case("logit-bias-not-a-token-id", msg(logit_bias={"cat": 5}), code="invalid_value"),
    Case("logit-bias-out-of-range", msg(logit_bias={"5": 101}), code="invalid_value"),
    Case("logit-bias-outside-the-vocabulary", msg(logit_bias={"4000000000": 1}), code="invalid_value"),
    Case("logit-bias-a-list", msg(logit_bias=[5]), code="invalid_type"),
    Case("min-tokens-over-max-tokens", msg(min_tokens=5), code="invalid_value"),
    Case("min-tokens-negative", msg(min_tokens=-1), code="invalid_value"),
    Case("ignore-eos-a-string", msg(ignore_eos="yes"), code="invalid_type"),
    Case("temperature-negative", msg(temperature=-0.1), code="invalid_value"),
    Case("temperature-too-high", msg(temperature=2.5), code="invalid_value"),
    Case("temperature-a-string", msg(temperature="hot"), code="invalid_type"),
    Case("top-p-zero", msg(top_p=0), code="invalid_value"),
    Case("top-p-above-one", msg(top_p=1.5), code="invalid_value"),
    Case("top-k-zero", msg(top_k=0), code="invalid_value"),
    Case("n-zero", msg(n=0), code="invalid_value"),
    Case("n-negative", msg(n=-1), code="invalid_value"),
    Case("n-above-limit", msg(n=17), code="invalid_value"),
    Case("max-tokens-negative", msg(max_tokens=-5), code="invalid_value"),
    Case("max-tokens-zero", msg(max_tokens=0), code="invalid_value"),
    Case("max-tokens-beyond-context", msg(max_tokens=100_000), code="invalid_value"),
    Case("max-completion-tokens-beyond-context", msg(max_tokens=None, max_completion_tokens=CONTEXT + 1),
         code="invalid_value"),
    Case("max-tokens-huge-integer", msg(max_tokens=10**20), code="invalid_type"),
    Case("max-tokens-fractional", msg(max_tokens=1.5), code="invalid_type"),
    Case("max-tokens-conflict", msg(max_tokens=4, max_completion_tokens=8), code="invalid_value"),
    Case("stop-five-sequences", msg(stop=["a", "b", "c", "d", "e"]), code="invalid_value"),
    Case("stop-empty-string", msg(stop=""), code="invalid_value"),
    Case("stop-integer", msg(stop=7), code="invalid_type"),
    Case("stop-list-with-integer", msg(stop=["a", 7]), code="invalid_type"),
    Case("presence-penalty-too-high", msg(presence_penalty=3), code="invalid_value"),
    Case("frequency-penalty-too-low", msg(frequency_penalty=-2.5), code="invalid_value"),
    Case("top-logprobs-above-20", msg(logprobs=True, top_logprobs=21), code="invalid_value"),
    Case("top-logprobs-negative", msg(logprobs=True, top_logprobs=-1), code="invalid_value"),
    Case("top-logprobs-without-logprobs", msg(top_logprobs=2), code="invalid_value"),
    Case("logprobs-a-string", msg(logprobs="yes"), code="invalid_type"),
    Case("seed-a-string", msg(seed="42"), code="invalid_type"),
    Case("seed-fractional", msg(seed=1.5), code="invalid_type"),
    Case("seed-beyond-int64", msg(seed=2**64), code="invalid_type"),
    Case("stream-a-string", msg(stream="yes"), code="invalid_type"),
    Case("stream-options-without-stream", msg(stream_options={"include_usage": True}), code="invalid_value"),
    Case("stream-options-unknown-key", msg(stream=True, stream_options={"include_everything": True}),
         code="unknown_parameter"),
    Case("granularity-not-a-candidate", msg(granularity=37), code="invalid_value"),
    Case("granularity-zero", msg(granularity=0), code="invalid_value"),
    Case("granularity-unknown-word", msg(granularity="fine"), code="invalid_value"),
    Case("detail-unknown", image(VALID_PNG, detail="medium"), code="invalid_value"),
    # --- prompt size ------------------------------------------------------------------------
    Case("text-prompt-beyond-context", msg(messages=[{"role": "user", "content": "hello " * (CONTEXT + 100)}]),
         code="context_length_exceeded"),
    Case("text-prompt-beyond-context-streaming",
         msg(stream=True, messages=[{"role": "user", "content": "hello " * (CONTEXT + 100)}]),
         code="context_length_exceeded"),
    Case("image-prompt-beyond-context", image(big_square_png, detail="high"), code="context_length_exceeded"),
    # --- broken or hostile images -----------------------------------------------------------
    Case("bad-base64", image("data:image/png;base64,%%%not-base64%%%"), code="invalid_image"),
    Case("non-image-bytes", image(b"this is plain text, not an image", "image/png"), code="invalid_image"),
    Case("data-url-without-base64", image("data:image/png,rawbytes"), code="invalid_image"),
    Case("data-url-text-media-type", image("data:text/plain;base64,aGVsbG8="), code="invalid_image"),
    Case("data-url-without-comma", image("data:image/png;base64"), code="invalid_image"),
    Case("empty-image", image(b""), code="invalid_image"),
    Case("truncated-png-header", image(VALID_PNG[:30]), code="invalid_image"),
    Case("truncated-png-data", image(VALID_PNG[:-40]), code="invalid_image"),
    Case("png-crc-error", image(p.png(40, 30, crc_ok=False)), code="invalid_image"),
    Case("truncated-jpeg", image(p.jpeg(32, 32)[:40], "image/jpeg"), code="invalid_image"),
    Case("jpeg-garbage-after-soi", image(b"\xff\xd8\xff\xe0" + b"\x00" * 64, "image/jpeg"), code="invalid_image"),
    Case("svg", image(p.SVG, "image/svg+xml"), code="invalid_image"),
    Case("svg-claiming-png", image(p.SVG, "image/png"), code="invalid_image"),
    Case("bmp", image(p.BMP, "image/bmp"), code="invalid_image"),
    Case("gif-header-only", image(b"GIF89a\x01\x00\x01\x00", "image/gif"), code="invalid_image"),
    Case("webp-header-only", image(b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"), code="invalid_image"),
    Case("zero-size-png", image(p.png_header_only(0, 0)), code="invalid_image"),
    Case("header-claims-60000x60000", image(p.png_header_only(60_000, 60_000)), code="invalid_image"),
    Case("header-over-pixel-limit", image(p.png_header_only(16_000, 3_000)), code="invalid_image"),
    Case("decompression-bomb-12k", image(p.png_bomb), code="invalid_image"),
    Case("image-over-byte-limit", image(lambda: p.PNG_SIGNATURE + os.urandom(MAX_IMAGE + 4096)),
         code="invalid_image"),
    Case("too-many-images", lambda: p.with_images(*[p.data_url(VALID_PNG)] * 9), code="invalid_value"),
    Case("one-broken-among-good", lambda: p.with_images(
        p.data_url(VALID_PNG), p.data_url(p.png(40, 30, crc_ok=False)), p.data_url(p.jpeg())),
         code="invalid_image"),
    Case("one-broken-among-good-streaming", lambda: p.with_images(
        p.data_url(VALID_PNG), p.data_url(VALID_PNG[:-40]), stream=True), code="invalid_image"),
    # --- hostile URLs (http fetching is off on this server) ---------------------------------
    Case("file-url", image("file:///etc/passwd"), code="invalid_image"),
    Case("ftp-url", image("ftp://example.com/cat.png"), code="invalid_image"),
    Case("gopher-url", image("gopher://127.0.0.1:70/_x"), code="invalid_image"),
    Case("javascript-url", image("javascript:alert(1)"), code="invalid_image"),
    Case("metadata-url-fetching-off", image("http://169.254.169.254/latest/meta-data/"), code="invalid_image"),
    Case("loopback-url-fetching-off", image("http://127.0.0.1:1/x.png"), code="invalid_image"),
    Case("relative-path-url", image("/etc/passwd"), code="invalid_image"),
    Case("empty-url", image(" "), code="invalid_value"),
    # --- routes -----------------------------------------------------------------------------
    Case("get-on-chat-completions", None, status=405, code="method_not_allowed", method="GET"),
    Case("put-on-chat-completions", msg(), status=405, code="method_not_allowed", method="PUT"),
    Case("delete-models", None, status=405, code="method_not_allowed", method="DELETE", path="/v1/models"),
    Case("post-health", None, status=405, code="method_not_allowed", path="/health"),
    # --- /v1/completions (text) -----------------------------------------------------------------
    Case("completions-with-a-chat-body", msg(), code="unknown_parameter", path="/v1/completions"),
    Case("completions-no-prompt", text(prompt=None), code="missing_required_parameter", path="/v1/completions"),
    Case("completions-token-id-past-vocabulary", text(prompt=[1, 2, 10**6]), code="invalid_value",
         path="/v1/completions"),
    Case("completions-token-id-negative", text(prompt=[1, -2]), code="invalid_value", path="/v1/completions"),
    Case("completions-token-id-too-big", text(prompt=[2**32]), code="invalid_value", path="/v1/completions"),
    Case("completions-token-ids-and-text", text(prompt=[[1, 2], "a"]), code="invalid_value",
         path="/v1/completions"),
    Case("completions-token-ids-empty-second", text(prompt=[[1, 2], []]), code="invalid_value",
         path="/v1/completions"),
    Case("completions-echo-token-id-past-vocabulary", text(prompt=[1, 10**6], echo=True, logprobs=1),
         code="invalid_value", path="/v1/completions"),
    Case("completions-max-tokens-zero-without-echo", text(prompt=[1, 2], max_tokens=0), code="invalid_value",
         path="/v1/completions"),
    Case("completions-echo-max-tokens-zero-min-tokens", text(echo=True, max_tokens=0, min_tokens=1),
         code="invalid_value", path="/v1/completions"),
    # --- /tokenize and /detokenize --------------------------------------------------------------
    Case("tokenize-nothing", lambda: {}, code="invalid_value", path="/tokenize"),
    Case("tokenize-prompt-and-messages", lambda: {"prompt": "a", "messages": []}, code="invalid_value",
         path="/tokenize"),
    Case("tokenize-prompt-a-number", lambda: {"prompt": 5}, code="invalid_type", path="/tokenize"),
    Case("tokenize-unknown-field", lambda: {"prompt": "a", "add_special_tokens": False},
         code="unknown_parameter", path="/tokenize"),
    Case("tokenize-image-placeholder", lambda: {"prompt": "see <image>"}, code="invalid_value",
         path="/tokenize"),
    Case("tokenize-unknown-model", lambda: {"model": "nope", "prompt": "a"}, status=404,
         code="model_not_found", path="/tokenize"),
    Case("tokenize-not-json", raw(b"{prompt"), code="invalid_json", path="/tokenize"),
    Case("detokenize-no-tokens", lambda: {}, code="missing_required_parameter", path="/detokenize"),
    Case("detokenize-past-vocabulary", lambda: {"tokens": [1, 10**6]}, code="invalid_value",
         path="/detokenize"),
    Case("detokenize-negative", lambda: {"tokens": [-1]}, code="invalid_value", path="/detokenize"),
    Case("detokenize-strings", lambda: {"tokens": "1 2 3"}, code="invalid_type", path="/detokenize"),
    Case("get-tokenize", None, status=405, code="method_not_allowed", method="GET", path="/tokenize"),
    Case("completions-second-prompt-empty", text(prompt=["a", ""]), code="invalid_value", path="/v1/completions"),
    Case("completions-second-prompt-refused", text(prompt=["a", "see <image>"]), code="invalid_value",
         path="/v1/completions"),
    Case("completions-empty-prompt", text(prompt=""), code="invalid_value", path="/v1/completions"),
    Case("completions-image-placeholder", text(prompt="see <image>"), code="invalid_value",
         path="/v1/completions"),
    Case("completions-suffix", text(suffix="!"), code="unsupported_parameter", path="/v1/completions"),
    Case("completions-logprobs-a-bool", text(logprobs=True), code="invalid_type", path="/v1/completions"),
    Case("completions-echo-logprobs-too-many", text(echo=True, logprobs=21), code="invalid_value",
         path="/v1/completions"),
    Case("completions-best-of", text(best_of=3), code="invalid_value", path="/v1/completions"),
    Case("completions-unknown-model", text(model="gpt-17"), status=404, code="model_not_found",
         path="/v1/completions"),
    Case("completions-prompt-too-long", text(prompt="word " * 4 * CONTEXT), code="context_length_exceeded",
         path="/v1/completions"),
    Case("unknown-route-embeddings", msg(), status=404, code="not_found", path="/v1/embeddings"),
    Case("unknown-route-root", None, status=404, code="not_found", method="GET", path="/"),
    Case("path-traversal", None, status=404, code="not_found", method="GET", path="/v1/../../etc/passwd"),
    Case("unknown-model-route", None, status=404, code="model_not_found", method="GET", path="/v1/models/gpt-17"),
]


@pytest.fixture(scope="module")
def grain(start_grain):
    return start_grain(*FLAGS)


@pytest.fixture(scope="module")
def traffic(grain):
    t = Traffic(grain.url, MODEL, threads=3).start()
    yield t
    t.stop()


def test_case_names_are_unique_and_there_are_at_least_60():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 60, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_gets_a_4xx_openai_error(grain, traffic, case):
    headers = dict(case.headers)
    content = None
    if case.body is not None:
        body = case.body()
        if isinstance(body, dict):
            content = json.dumps(body).encode()
        else:
            content = body
        headers.setdefault("content-type", "application/json")
    resp = grain.client.request(case.method, case.path, content=content, headers=headers)
    assert_openai_error(resp, case.status, case.code)
    assert grain.alive()


def test_valid_traffic_alongside_all_succeeded(grain, traffic):
    traffic.stop()
    print(f"valid requests completed alongside the bad ones: {traffic.ok}")
    assert not traffic.failures, traffic.failures[:10]
    assert traffic.ok >= 4, f"only {traffic.ok} valid requests completed"


def test_server_healthy_after_the_bad_inputs(grain, traffic):
    assert grain.alive()
    assert grain.client.get("/ready").status_code == 200
    assert grain.client.get("/health").status_code == 200
    for error in ("internal", "timeout", "not_ready", "shutting_down"):
        assert grain.metric("grain_request_failure_total", error=error) == 0, error
    assert grain.metric("grain_request_failure_total", error="invalid_image") > 0
    records = grain.log_records()
    panics = [r for r in records if "panick" in json.dumps(r)]
    assert not panics, panics[:3]
    server_errors = [r for r in records if r.get("fields", {}).get("status", 0) >= 500]
    assert not server_errors, server_errors[:3]
    # The engine is idle again: nothing running, waiting or holding KV blocks.
    assert grain.metric("grain_num_requests_running") == 0
    assert grain.metric("grain_num_requests_waiting") == 0
    assert grain.metric("grain_kv_cache_usage_ratio") == 0
