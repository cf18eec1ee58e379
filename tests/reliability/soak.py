"""Load and soak on loopback: many streaming requests at a fixed concurrency, a share of whose
clients hang up mid-stream; then the server must be idle again (no KV blocks in use, nothing
running or waiting) and its memory must not grow with the requests served (see `leak_rate`).

As a script it starts its own server and prints the figures as JSON (the full run of
docs/reliability.md):

    cargo build --release -p grain
    .venv-e2e/bin/python tests/reliability/soak.py --requests 1000 --concurrency 64 --disconnect 0.3

`test_load.py` runs a small version of the same in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

import httpx2 as httpx

import rel_payloads as p
from rel_harness import Grain


@dataclass
class SoakResult:
    requests: int
    concurrency: int
    completed: int = 0
    disconnected: int = 0
    failures: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    wall_s: float = 0.0
    # The lowest RSS (KiB) while each sixteenth of the requests was served, and every fourth one of
    # those (the quarters).
    rss_kib_by_sixteenth: list[int] = field(default_factory=list)
    rss_kib_by_quarter: list[int] = field(default_factory=list)
    rss_growth_q2_to_q4: float = 0.0
    # `leak_rate` of the sixteenths: KiB per request.
    rss_kib_per_request: float = 0.0
    # Engine state once the load stopped (after at most `settle_s`).
    kv_cache_usage_ratio: float = -1.0
    running: float = -1.0
    waiting: float = -1.0
    settle_s: float = 0.0
    cancelled_metric: float = 0.0

    def to_json(self) -> str:
        d = asdict(self)
        d["failures"] = d["failures"][:20]
        return json.dumps(d, indent=2)


def _bodies(model: str) -> list[dict]:
    png_urls = [p.data_url(p.png(24 + 8 * i, 16 + 4 * i)) for i in range(4)]
    prompts = ["Tell me a story.", "Count to twenty.", "What is a granularity router?", "Describe the sea."]
    bodies = []
    for i in range(16):
        max_tokens = 16 + 8 * (i % 4)
        if i % 4 == 3:
            body = p.with_images(png_urls[i % len(png_urls)], model=model, max_tokens=max_tokens)
        elif i % 8 == 2:
            # A text completion that scores its prompt (echo + logprobs), as evaluation harnesses send.
            body = {"model": model, "prompt": prompts[i % len(prompts)] * 3, "max_tokens": max_tokens,
                    "echo": True, "logprobs": 2}
        else:
            body = p.chat(prompts[i % len(prompts)], model=model, max_tokens=max_tokens)
            if i % 8 == 6:
                body["response_format"] = {"type": "json_object"}
            elif i % 8 == 5:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "cat", "schema": p.CAT_SCHEMA}}
            elif i % 8 == 1:
                # Tools with tool_choice "auto" (the default): a call or text.
                body["tools"] = [{"type": "function", "function": {"name": "cat", "parameters": p.CAT_SCHEMA}}]
        body.update(stream=True, stream_options={"include_usage": True}, temperature=0.8)
        bodies.append(body)
    return bodies


async def _one(client: httpx.AsyncClient, body: dict, hang_up_after: int | None, result: SoakResult) -> None:
    """One streaming request; with `hang_up_after`, close the connection after that many chunks."""
    try:
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        async with client.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                result.failures.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            chunks, done, error = 0, False, None
            event = None
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                if event == "error":
                    error = data
                    continue
                chunk = json.loads(data)
                chunks += 1
                if chunk.get("usage"):
                    result.completion_tokens += chunk["usage"]["completion_tokens"]
                if hang_up_after is not None and chunks >= hang_up_after:
                    # Leaving the `async with` with the body unread closes the connection.
                    result.disconnected += 1
                    return
            if error is not None:
                result.failures.append(f"error event: {error[:200]}")
            elif not done:
                result.failures.append("stream ended without [DONE]")
            else:
                result.completed += 1
    except httpx.HTTPError as e:
        result.failures.append(f"{type(e).__name__}: {e}")


def leak_rate(rss_kib: list[int], requests_between: float) -> float:
    """KiB of RSS per request: the median of the rises between consecutive samples, divided by the
    requests served between two samples. A leak raises every interval by about the same amount;
    glibc malloc's growth comes in steps of 1-20 MB (a thread's arena reaching a new size, memory
    handed back and taken again), three to five in 256 requests, each in one interval: the median
    of 15 intervals ignores them."""
    rises = sorted(b - a for a, b in zip(rss_kib, rss_kib[1:]))
    if not rises:
        return 0.0
    mid = len(rises) // 2
    median = rises[mid] if len(rises) % 2 else (rises[mid - 1] + rises[mid]) / 2
    return median / requests_between


async def run_soak_async(
    grain: Grain,
    requests: int = 200,
    concurrency: int = 64,
    disconnect: float = 0.3,
    seed: int = 0,
    settle_timeout_s: float = 30.0,
    model: str = "grain-tiny",
    warmup: int = 0,
) -> SoakResult:
    """`warmup` requests (same mix, not counted) first bring the allocator and the caches to
    their working size, so that a short run measures growth rather than start-up."""
    if warmup:
        await run_soak_async(grain, warmup, concurrency, disconnect, seed + 1, settle_timeout_s, model)
    rng = random.Random(seed)
    bodies = _bodies(model)
    result = SoakResult(requests=requests, concurrency=concurrency)
    finished = 0
    # The lowest RSS seen while each sixteenth of the requests was being served (every 20 ms):
    # in-flight requests come and go, and with them buffers of a few MB that malloc maps and unmaps;
    # the minimum is what stayed.
    lows: list[int] = []
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    started = time.monotonic()

    async with httpx.AsyncClient(base_url=grain.url, timeout=300, limits=limits) as client:

        async def task(i: int) -> None:
            nonlocal finished
            hang_up = rng.randint(1, 6) if rng.random() < disconnect else None
            async with sem:
                await _one(client, bodies[i % len(bodies)], hang_up, result)
            finished += 1

        def sample() -> None:
            part = min(finished * 16 // requests, 15)
            rss = grain.rss_kib()
            while len(lows) <= part:  # a part shorter than the sampling period
                lows.append(rss)
            lows[part] = min(lows[part], rss)

        async def sample_rss() -> None:
            while True:
                sample()
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(task(i) for i in range(requests)))
        sampler.cancel()
        sample()  # the last part, which may have ended between two samples
        result.rss_kib_by_sixteenth = lows

    result.wall_s = round(time.monotonic() - started, 2)
    e = result.rss_kib_by_sixteenth
    if len(e) == 16:
        result.rss_kib_by_quarter = e[3::4]
        q = result.rss_kib_by_quarter
        result.rss_growth_q2_to_q4 = round((q[3] - q[1]) / q[1], 4)
        result.rss_kib_per_request = round(leak_rate(e, requests / 16), 2)

    # Cancelled requests are reaped at the scheduler's next step; give it a moment.
    settle_start = time.monotonic()
    while True:
        result.kv_cache_usage_ratio = grain.metric("grain_kv_cache_usage_ratio")
        result.running = grain.metric("grain_num_requests_running")
        result.waiting = grain.metric("grain_num_requests_waiting")
        idle = result.kv_cache_usage_ratio == 0 and result.running == 0 and result.waiting == 0
        if idle or time.monotonic() - settle_start > settle_timeout_s:
            break
        await asyncio.sleep(0.1)
    result.settle_s = round(time.monotonic() - settle_start, 2)
    result.cancelled_metric = grain.metric("grain_request_failure_total", error="cancelled")
    return result


def run_soak(grain: Grain, **kwargs) -> SoakResult:
    return asyncio.run(run_soak_async(grain, **kwargs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--disconnect", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=0, help="uncounted requests first")
    ap.add_argument("serve_flags", nargs="*", help="extra `grain serve` flags (after --)")
    args = ap.parse_args()
    grain = Grain(*args.serve_flags)
    try:
        rss_start = grain.rss_kib()
        result = run_soak(
            grain, requests=args.requests, concurrency=args.concurrency,
            disconnect=args.disconnect, seed=args.seed, warmup=args.warmup,
        )
        print(json.dumps({"rss_kib_at_start": rss_start}))
        print(result.to_json())
    finally:
        print(json.dumps({"exit_code": grain.stop()}))


if __name__ == "__main__":
    main()
