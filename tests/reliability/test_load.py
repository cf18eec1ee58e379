"""Load on loopback: the CI-sized soak (1024 streaming requests at concurrency 64 after 768 warm-up
requests, 30% of clients hanging up mid-stream) and admission overflow (429 with Retry-After,
every admitted request completes). `soak.py` runs the full-size soak.
"""

from __future__ import annotations

import asyncio

import httpx2 as httpx

import rel_payloads as p
from rel_harness import assert_openai_error
from soak import run_soak

REQUESTS = 1024
CONCURRENCY = 64
DISCONNECT = 0.3


def test_soak_with_disconnects_leaves_the_engine_idle_and_memory_flat(start_grain):
    grain = start_grain()
    # 768 warm-up requests: the vision tower, attention and router allocate on the rayon workers,
    # whose malloc arenas reach their working size later than one thread's would.
    result = run_soak(grain, requests=REQUESTS, concurrency=CONCURRENCY, disconnect=DISCONNECT, warmup=768)
    print(result.to_json())
    assert not result.failures, result.failures[:10]
    assert result.completed + result.disconnected == REQUESTS
    # The hang-up share is drawn per request with a fixed seed: about 30%.
    assert 0.2 * REQUESTS <= result.disconnected <= 0.4 * REQUESTS
    assert result.kv_cache_usage_ratio == 0, result
    assert result.running == 0 and result.waiting == 0, result
    assert len(result.rss_kib_by_sixteenth) == 16
    # No leak: RSS rises by under 64 KiB per request served, measured as the median rise between
    # sixteenths of the run (each the lowest RSS while its requests were served; see
    # soak.leak_rate), so that the allocator's one-off steps do not count. Measured 2026-11-27:
    # 0.1-0.3 KiB/request as is; 116 and 124 with a 100 KiB buffer leaked in every request (the
    # overall rise Q2->Q4 was then 19-22%, against -2 to 4% as is). The overall rise is printed,
    # not asserted: glibc malloc moves RSS in steps of 1-20 MB as threads' arenas reach new sizes,
    # which over the 256-request run this used to be gave anything from -10% to 17% (40 runs).
    assert result.rss_kib_per_request < 64, result.rss_kib_by_sixteenth
    # Hang-ups are counted as cancellations, not as server errors.
    assert result.cancelled_metric > 0
    assert grain.metric("grain_request_failure_total", error="internal") == 0
    assert grain.alive()
    assert grain.client.get("/ready").status_code == 200


async def _burst(url: str, n: int, stream: bool) -> list[tuple[int, dict, str]]:
    """`n` requests at once; (status, headers, body text) of each."""
    body = p.chat("Write a long answer.", max_tokens=200, temperature=0)
    body["stream"] = stream
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one():
            resp = await client.post("/v1/chat/completions", json=body)
            return resp.status_code, dict(resp.headers), resp.text

        return await asyncio.gather(*(one() for _ in range(n)))


def test_admission_overflow_answers_429_and_admitted_requests_complete(start_grain):
    grain = start_grain("--max-concurrent-requests", "4", "--max-queue", "4", "--retry-after-s", "2")
    for stream in (False, True):
        results = asyncio.run(_burst(grain.url, 32, stream))
        statuses = sorted(s for s, _, _ in results)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 4 and statuses.count(429) >= 1, statuses
        for status, headers, text in results:
            if status == 429:
                assert headers.get("retry-after") == "2", headers
                resp = httpx.Response(429, headers=headers, content=text.encode())
                assert_openai_error(resp, 429, "overloaded")
            elif stream:
                assert text.rstrip().endswith("data: [DONE]"), text[-200:]
                assert "event: error" not in text
            else:
                assert httpx.Response(200, content=text.encode()).json()["choices"][0]["finish_reason"]
    assert grain.metric("grain_request_failure_total", error="overloaded") >= 2
    assert grain.metric("grain_num_requests_running") == 0
    assert grain.client.get("/ready").status_code == 200


def test_leak_rate_sees_a_steady_rise_and_not_an_allocator_step():
    from soak import leak_rate

    flat = [170_000, 170_050, 169_980, 170_020, 170_010, 170_030, 170_000]
    step = [145_684, 146_000, 169_996, 170_000, 170_010, 170_004, 170_020]  # one 24 MB step
    two_steps = [150_000, 160_000, 160_010, 170_000, 170_010, 170_000, 170_020]
    leak = [170_000 + 40 * 32 * i for i in range(7)]  # 40 KiB per request, 32 requests apart
    assert leak_rate(flat, 32) < 2
    assert leak_rate(step, 32) < 2
    assert leak_rate(two_steps, 32) < 2
    assert abs(leak_rate(leak, 32) - 40) < 1e-9
    # Sixteen samples as the soak takes them: four steps and a drop in fifteen intervals.
    noisy = [150_000] * 4 + [155_000] * 3 + [170_000] * 2 + [160_000] * 3 + [166_000, 166_000, 171_000, 171_000]
    assert leak_rate(noisy, 16) < 2
    assert leak_rate([150_000 + 64 * 16 * i for i in range(16)], 16) == 64
