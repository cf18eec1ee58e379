"""Faults: a KV budget so tight that sequences get preempted (outputs must still equal solo runs),
SIGTERM in the middle of load (everything admitted finishes, exit code 0), and slow clients —
slowloris headers, a body that stops arriving, readers that stop reading — which must not hold
the server's connections or admission slots beyond the client timeout.

Every wait here is bounded generously and asserts an outcome, never a speed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import httpx2 as httpx

import rel_payloads as p
from rel_harness import assert_openai_error, read_sse_lines, stream_text

PROMPTS = [f"Request {i}: tell me about {w}." for i, w in enumerate(
    ["cats", "dogs", "the sea", "granularity", "routers", "tokens", "images", "GPUs"])]


def _wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_tight_kv_budget_preempts_and_every_output_matches_its_solo_run(start_grain):
    # 24 blocks of 16 positions; each request needs about 12 (60 prompt + 120 generated), so
    # eight at once cannot all hold their blocks.
    grain = start_grain("--num-kv-blocks", "24", "--max-num-batched-tokens", "256")

    def body(prompt: str) -> dict:
        return p.chat(prompt, max_tokens=120, temperature=0)

    solo = []
    for prompt in PROMPTS:
        resp = grain.client.post("/v1/chat/completions", json=body(prompt))
        assert resp.status_code == 200, resp.text
        solo.append(resp.json()["choices"][0]["message"]["content"])
    assert grain.metric("grain_num_preemptions_total") == 0

    async def together():
        async with httpx.AsyncClient(base_url=grain.url, timeout=300) as client:
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body(pr)) for pr in PROMPTS))

    responses = asyncio.run(together())
    assert [r.status_code for r in responses] == [200] * len(PROMPTS)
    together_out = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert grain.metric("grain_num_preemptions_total") > 0
    assert together_out == solo
    assert grain.metric("grain_kv_cache_usage_ratio") == 0


def test_sigterm_during_load_drains_cleanly(start_grain):
    grain = start_grain("--drain-timeout-s", "60")
    n = 12
    started = threading.Barrier(n + 1)
    results: list[tuple[str, list[str]] | str] = [""] * n

    def stream(i: int) -> None:
        # Sampled with a fixed seed: long (the random-weight model rarely says EOS at temperature
        # 1) and the same every run, so the drain has real work to wait for.
        body = p.chat(PROMPTS[i % len(PROMPTS)], max_tokens=400, temperature=1.0, seed=i, stream=True)
        try:
            with httpx.Client(base_url=grain.url, timeout=120) as client:
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200
                    lines, rest = [], resp.iter_lines()
                    for line in rest:
                        lines.append(line)
                        if line.startswith("data:"):
                            break
                    started.wait(timeout=60)
                    lines.extend(rest)
                    chunks, errors = read_sse_lines(lines)
            results[i] = (stream_text(chunks), errors)
        except Exception as e:  # reported below with the request's index
            results[i] = f"{type(e).__name__}: {e}"
            started.abort()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started.wait(timeout=60)
    grain.proc.send_signal(signal.SIGTERM)

    # While draining: not ready, and new work is refused with an OpenAI error.
    ready = _wait_for(lambda: _status(grain, "GET", "/ready") in (503, None), 30, "/ready to turn 503")
    assert ready
    refused = grain.client.post("/v1/chat/completions", json=p.chat("late"))
    assert_openai_error(refused, 503, "shutting_down")

    for t in threads:
        t.join(timeout=120)
    failures = [r for r in results if isinstance(r, str)]
    assert not failures, failures
    assert all(not errors for _, errors in results), results
    assert grain.proc.wait(timeout=90) == 0
    assert "drained" in grain.log_text()


def _status(grain, method: str, path: str) -> int | None:
    try:
        return grain.client.request(method, path, timeout=5).status_code
    except httpx.TransportError:
        return None


def _closed_by_server(sock: socket.socket, timeout: float) -> bytes:
    """Reads until the server closes the connection; returns what it sent."""
    sock.settimeout(timeout)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def _response_head(sock: socket.socket, timeout: float) -> bytes:
    """Reads until the end of a response's head (a little of the body may come with it)."""
    sock.settimeout(timeout)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1024)
        if not chunk:
            break
        received += chunk
    return received


def test_slowloris_headers_are_cut_and_others_are_served(start_grain):
    grain = start_grain("--client-timeout-s", "2")
    socks = []
    for _ in range(64):
        s = socket.create_connection(("127.0.0.1", grain.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: grain\r\n")
        socks.append(s)
    # One of them keeps trickling header bytes; the timeout covers the whole header, not a gap.
    trickler = socks[0]
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                trickler.sendall(b"X")
            except OSError:
                return
            time.sleep(0.2)

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # The server keeps serving everyone else meanwhile.
        for _ in range(3):
            resp = grain.client.post("/v1/chat/completions", json=p.chat("Hello."))
            assert resp.status_code == 200, resp.text
        for s in socks:
            _closed_by_server(s, timeout=60)
    finally:
        stop.set()
        for s in socks:
            s.close()
    assert grain.alive()
    assert grain.client.get("/ready").status_code == 200


def test_a_body_that_stops_arriving_gets_408(start_grain):
    grain = start_grain("--client-timeout-s", "2")
    with socket.create_connection(("127.0.0.1", grain.port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: grain\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{\"model\": \"grain-tiny\", "
        )
        reply = _closed_by_server(s, timeout=60)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:300]
    err = json.loads(body)["error"]
    assert err["code"] == "request_timeout" and err["type"] == "invalid_request_error"
    assert grain.client.get("/ready").status_code == 200


def test_clients_that_stop_reading_do_not_keep_their_admission_slots(start_grain):
    slots = 4
    grain = start_grain("--max-concurrent-requests", str(slots), "--client-timeout-s", "2")
    # Large responses (8 choices with 20 alternatives per token, about 1.3 kB per token) so that
    # the socket buffers fill while the clients read nothing. The server's send buffer may grow to
    # net.ipv4.tcp_wmem's maximum (4 MiB by default). Greedy decoding of this prompt runs the
    # embedded model to all 1500 tokens of every choice (about 15 MB); sampled choices could all
    # meet EOS within a few hundred tokens, and then a response fit in the buffers and finished
    # without a stall (it did, about once in thirty runs).
    body = json.dumps(p.chat("Say hello.", max_tokens=1500, temperature=0, n=8, logprobs=True,
                             top_logprobs=20, stream=True)).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: grain\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body)) + body
    readers = []
    try:
        for _ in range(slots):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", grain.port))
            s.sendall(request)
            readers.append(s)
        # Each reader reads its response head (sent once the request is admitted) and nothing
        # more. Without this a probe below could reach the server before the last reader's
        # request, take its slot and leave that reader with a 429.
        for s in readers:
            head = _response_head(s, timeout=60)
            assert head.startswith(b"HTTP/1.1 200"), head[:300]
        # Every slot held: a fifth request is refused.
        _wait_for(
            lambda: grain.client.post("/v1/chat/completions", json=p.chat("Hello.")).status_code == 429,
            60, "all readers to be admitted", step=0.2,
        )
        # Once they are cut off, admission is free again and a normal request is served.
        _wait_for(
            lambda: grain.client.post("/v1/chat/completions", json=p.chat("Hello.")).status_code == 200,
            120, "an admission slot", step=0.5,
        )
        assert "stopped reading" in grain.log_text(), grain.log_tail(60)
    finally:
        for s in readers:
            s.close()
    _wait_for(lambda: grain.metric("grain_num_requests_running") == 0, 60, "the engine to be idle")
    assert grain.metric("grain_kv_cache_usage_ratio") == 0
