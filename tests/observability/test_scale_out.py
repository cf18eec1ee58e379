"""Scale-out, simulated on loopback: two `grain serve` replicas behind nginx (Debian package).

nginx stands in for a Kubernetes Service (round-robin, passive health; see nginx_lb.py). Which
replica served a request is read from nginx's access log, not from Grain, so the replicas'
own metrics can be checked against it:

- traffic spreads across both replicas, and their metrics add up to the client-side totals;
- a replica that drains (SIGTERM) stops getting new requests after its first refusal, the
  other serves them all with no error reaching the client, its in-flight stream completes,
  and it exits 0; after it is gone, the survivor serves everything.

Run: `GRAIN_BIN=target/debug/grain .venv-e2e/bin/python -m pytest -q tests/observability`.
"""

from __future__ import annotations

import http.server
import shutil
import signal
import threading
from collections import Counter
from contextlib import ExitStack

import pytest

from harness import (
    Exposition,
    Grain,
    Tally,
    complete,
    image_messages,
    png,
    text_messages,
    wait_until,
    workdir,
)
from harness import http as request
from nginx_lb import Nginx

COMPLETIONS = "/v1/chat/completions"


@pytest.fixture
def stack(binary, require):
    require("nginx")
    work = workdir("grain-lb-")
    # The drain test holds one request in flight on purpose, with an image served on loopback.
    args = [
        "--drain-timeout-s=300",
        "--allow-http-images=true",
        "--image-fetch-allow-private=true",
        "--image-fetch-timeout-s=300",
    ]
    with ExitStack() as processes:
        processes.callback(shutil.rmtree, work, ignore_errors=True)
        a = Grain(work, "replica-a", args)
        processes.callback(a.stop, signal.SIGKILL)
        b = Grain(work, "replica-b", args)
        processes.callback(b.stop, signal.SIGKILL)
        lb = Nginx(work, [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        processes.callback(lb.stop)
        yield a, b, lb


def completions_log(lb: Nginx, expect: int | None = None) -> list[dict]:
    """nginx's log of completion requests; with `expect`, waits until it has that many lines.

    nginx logs a request when it finalizes it, which may be just after the client has read the
    whole response.
    """

    def read():
        entries = [e for e in lb.access_log() if e["uri"] == COMPLETIONS]
        return (expect is None or len(entries) >= expect) and [entries]

    return wait_until(f"{expect} completions in nginx's access log", read, 30)[0]


def mixed_traffic(url: str, model: str, tally: Tally, n: int) -> None:
    details = ("low", "auto", "high", None)
    for i in range(n):
        detail = details[i % len(details)]
        messages = text_messages(f"Hello number {i}.") if detail is None else image_messages(detail)
        complete(url, model, messages, tally, max_tokens=6, temperature=0)


def delta(before: Exposition, after: Exposition, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def successes(grain: Grain) -> float:
    return grain.metrics().value("grain_request_success_total")


def test_traffic_spreads_and_replica_metrics_add_up(stack):
    a, b, lb = stack
    tally = Tally()
    mixed_traffic(lb.url, a.model, tally, 24)

    log = completions_log(lb, 24)
    assert len(log) == 24 and all(e["status"] == 200 and len(e["tried"]) == 1 for e in log), log
    served = Counter(e["tried"][0][0] for e in log)
    a_addr, b_addr = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    assert set(served) == {a_addr, b_addr}
    assert abs(served[a_addr] - served[b_addr]) <= 1, served  # round-robin
    print(f"\nnginx round-robin: replica A served {served[a_addr]}, replica B {served[b_addr]}")

    ma, mb = a.metrics(), b.metrics()
    # Each replica counts exactly the requests nginx sent it...
    assert ma.value("grain_request_success_total") == served[a_addr]
    assert mb.value("grain_request_success_total") == served[b_addr]

    # ...and together they account for everything the client saw.
    def total(name: str, **labels: str) -> float:
        return ma.value(name, **labels) + mb.value(name, **labels)

    assert total("grain_request_success_total") == tally.requests
    assert total("grain_time_to_first_token_seconds_count") == tally.requests
    assert total("grain_request_prompt_tokens_sum") == tally.prompt_tokens
    assert total("grain_request_generation_tokens_sum") == tally.completion_tokens
    assert total("grain_visual_tokens_total", kind="selected") == tally.visual_selected
    assert total("grain_visual_tokens_total", kind="full") == tally.visual_full
    assert total("grain_visual_tokens_saved_total") == tally.visual_saved > 0
    for (granularity, source), images in tally.granularity.items():
        assert total("grain_granularity_selected_total", granularity=granularity, source=source) == images
    assert total("grain_granularity_selected_total") == sum(tally.granularity.values())


class GatedImage:
    """An image URL on loopback whose download waits until `open()`.

    A completion naming it is in flight on its replica (fetching the image) for exactly as long
    as the test wants, however fast the machine: that is what keeps a draining replica draining
    while the test sends it traffic. The replica must allow http image URLs to private hosts.
    """

    def __init__(self):
        self.requested = threading.Event()
        self.gate = threading.Event()
        body = png(96, 64)
        gated = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                gated.requested.set()
                gated.gate.wait(300)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/held.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class HeldRequest:
    """A completion sent straight to one replica, held in flight by a `GatedImage`."""

    def __init__(self, grain: Grain, image: GatedImage):
        self.result: tuple[int, object] | None = None
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe the image."},
                    {"type": "image_url", "image_url": {"url": image.url, "detail": "low"}},
                ],
            }
        ]

        def send():
            status, body, _ = request(
                "POST",
                f"{grain.url}{COMPLETIONS}",
                {"model": grain.model, "messages": messages, "max_tokens": 4},
            )
            self.result = (status, body)

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()
        assert image.requested.wait(60), "the replica never fetched the held image"

    def join(self) -> tuple[int, object]:
        self.thread.join(120)
        assert self.result is not None, "the held request never finished"
        return self.result


def test_draining_replica_gets_no_new_requests(stack):
    a, b, lb = stack
    mixed_traffic(lb.url, a.model, Tally(), 4)
    assert successes(a) > 0 and successes(b) > 0
    before = len(completions_log(lb, 4))

    image = GatedImage()
    try:
        _drain_while_holding(a, b, lb, image, before)
    finally:
        image.close()


def _drain_while_holding(a: Grain, b: Grain, lb: Nginx, image: GatedImage, before: int) -> None:
    a_addr, b_addr = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    held = HeldRequest(a, image)
    a_before, b_before = a.metrics(), b.metrics()
    a.proc.send_signal(signal.SIGTERM)
    wait_until(
        "replica A /ready to turn 503", lambda: request("GET", f"{a.url}/ready", timeout=2)[0] == 503, 30
    )

    tally = Tally()
    mixed_traffic(lb.url, a.model, tally, 12)  # every one must succeed: complete() raises otherwise

    # A is still draining: its held request is in flight.
    assert a.alive(), f"replica A exited early:\n{a.log_tail()}"
    assert request("GET", f"{a.url}/ready", timeout=5)[0] == 503
    a_after, b_after = a.metrics(), b.metrics()

    during = completions_log(lb, before + 12)[before:]
    assert len(during) == 12 and all(e["status"] == 200 for e in during), during
    assert all(e["tried"][-1] == (b_addr, "200") for e in during), during
    refused = [t for e in during for t in e["tried"] if t[0] == a_addr]
    # A answered its one new request with 503 and left the rotation (max_fails=1).
    assert refused == [(a_addr, "503")], during
    # A counted that refusal; nothing completed on A meanwhile; B served every new request.
    assert delta(a_before, a_after, "grain_request_failure_total", error="shutting_down") == len(refused)
    assert delta(a_before, a_after, "grain_request_success_total") == 0
    assert delta(b_before, b_after, "grain_request_success_total") == tally.requests == 12
    assert delta(b_before, b_after, "grain_request_prompt_tokens_sum") == tally.prompt_tokens

    # The held request completes: draining finishes in-flight work, then A exits 0.
    image.open()
    status, body = held.join()
    assert status == 200, body
    assert body["usage"]["prompt_tokens_details"]["granularity"] == [36]
    assert a.proc.wait(60) == 0, a.log_tail()

    # A is gone: the survivor serves everything, still without an error reaching the client.
    mixed_traffic(lb.url, b.model, Tally(), 4)
    after = completions_log(lb, before + 16)[before + 12 :]
    assert len(after) == 4 and all(e["status"] == 200 and e["tried"][-1][0] == b_addr for e in after), after
    print(
        f"\ndrain: {len(refused)} request refused by draining replica A and retried by nginx on B;"
        f" B served all {tally.requests}; A finished its in-flight request and exited 0"
    )
