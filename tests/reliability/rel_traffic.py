"""Valid requests run in background threads while a test throws bad ones at the same server."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx2 as httpx

import rel_payloads as p
from rel_harness import read_sse


def _valid_bodies(model: str) -> list[tuple[str, dict]]:
    png_url = p.data_url(p.png(48, 32))
    jpeg_url = p.data_url(p.jpeg(32, 16), "image/jpeg")
    return [
        ("text", p.chat("Say something.", model=model, max_tokens=8)),
        ("text-stream", p.chat("Say something.", model=model, max_tokens=8, stream=True,
                               stream_options={"include_usage": True})),
        ("png", p.with_images(png_url, model=model, max_tokens=4)),
        ("jpeg-stream", p.with_images(jpeg_url, model=model, max_tokens=4, stream=True)),
        ("json", {**p.chat("A cat as JSON.", model=model, max_tokens=8),
                  "response_format": {"type": "json_object"}}),
        ("json-schema", {**p.chat("A cat.", model=model, max_tokens=8),
                         "response_format": {"type": "json_schema", "json_schema": {
                             "name": "cat", "schema": p.CAT_SCHEMA}}}),
        ("tool-call", {**p.chat("Weather?", model=model, max_tokens=8, stream=True),
                       "tools": [{"type": "function", "function": {"name": "cat", "parameters": p.CAT_SCHEMA}}],
                       "tool_choice": {"type": "function", "function": {"name": "cat"}}}),
        ("tool-auto", {**p.chat("Weather?", model=model, max_tokens=8),
                       "tools": [{"type": "function", "function": {"name": "cat", "parameters": p.CAT_SCHEMA}}]}),
        ("score", {"model": model, "prompt": "Once upon a time", "echo": True, "logprobs": 1,
                   "max_tokens": 0}),
    ]


def check_valid(client: httpx.Client, kind: str, body: dict) -> str | None:
    """Sends one valid request; returns a description of what was wrong, or None."""
    try:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        if body.get("stream"):
            with client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    return f"{kind}: HTTP {resp.status_code} {resp.text[:200]}"
                chunks, errors = read_sse(resp)
            if errors:
                return f"{kind}: error event {errors}"
            reasons = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
            if not any(r in ("stop", "length", "tool_calls") for r in reasons):
                return f"{kind}: no finish_reason in {len(chunks)} chunks"
            return None
        resp = client.post(path, json=body)
        if resp.status_code != 200:
            return f"{kind}: HTTP {resp.status_code} {resp.text[:200]}"
        out = resp.json()
        if out["choices"][0]["finish_reason"] not in ("stop", "length", "tool_calls"):
            return f"{kind}: finish_reason {out['choices'][0]['finish_reason']}"
        if out["usage"]["completion_tokens"] > body["max_tokens"]:
            return f"{kind}: {out['usage']['completion_tokens']} tokens > max_tokens"
        return None
    except (httpx.HTTPError, ValueError, KeyError, AssertionError) as e:
        return f"{kind}: {type(e).__name__}: {e}"


@dataclass
class Traffic:
    """`threads` clients, each cycling through the valid request kinds until `stop()`."""

    url: str
    model: str = "grain-tiny"
    threads: int = 3
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Traffic":
        bodies = _valid_bodies(self.model)
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(bodies, i), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, bodies, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            i = offset
            while not self._stop.is_set():
                kind, body = bodies[i % len(bodies)]
                problem = check_valid(client, kind, body)
                with self._lock:
                    if problem is None:
                        self.ok += 1
                    else:
                        self.failures.append(problem)
                i += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=180)
