"""A real Prometheus (the Debian `prometheus` server) scrapes a real `grain serve`.

One module-scoped run: Grain and Prometheus start on loopback (scrape every second), Prometheus
sees the idle server (zero visual tokens saved), one `detail: low` image request goes in, and
Prometheus must report exactly the tokens that request's usage says it saved; then mixed traffic,
after which Prometheus' answers are checked against the client-side totals: counters exactly,
the TTFT quantiles against the client's own wall-clock bound, and every query of the Grafana
dashboard must evaluate. `promtool check metrics` lints the live exposition, and the README's
metrics table must match the exporter.

Run: `GRAIN_BIN=target/debug/grain .venv-e2e/bin/python -m pytest -q tests/observability`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

import dashboard
import metrics_table
from harness import Grain, Prometheus, Tally, complete, http, image_messages, text_messages, workdir

# DESIGN.md §5, written out independently of the code: family -> (accepted types, label names).
DESIGN_FAMILIES: dict[str, tuple[set[str], set[str]]] = {
    "grain_time_to_first_token_seconds": ({"histogram"}, set()),
    "grain_inter_token_latency_seconds": ({"histogram"}, set()),
    "grain_e2e_request_latency_seconds": ({"histogram"}, set()),
    "grain_request_queue_time_seconds": ({"histogram"}, set()),
    "grain_request_prompt_tokens": ({"histogram"}, set()),
    "grain_request_generation_tokens": ({"histogram"}, set()),
    "grain_request_success_total": ({"counter"}, {"finish_reason"}),
    "grain_request_failure_total": ({"counter"}, {"error"}),
    "grain_num_requests_running": ({"gauge"}, set()),
    "grain_num_requests_waiting": ({"gauge"}, set()),
    "grain_kv_cache_usage_ratio": ({"gauge"}, set()),
    "grain_num_preemptions_total": ({"counter"}, set()),
    "grain_batch_size": ({"gauge", "histogram"}, set()),
    "grain_step_duration_seconds": ({"histogram"}, {"phase"}),
    "grain_visual_tokens_total": ({"counter"}, {"kind"}),
    "grain_visual_tokens_saved_total": ({"counter"}, set()),
    "grain_granularity_selected_total": ({"counter"}, {"granularity", "source"}),
    "grain_router_duration_seconds": ({"histogram"}, set()),
    "grain_vision_encoder_duration_seconds": ({"histogram"}, set()),
    "grain_encoder_cache_hits_total": ({"counter"}, set()),
    "grain_encoder_cache_misses_total": ({"counter"}, set()),
    "grain_prefix_cache_hit_tokens_total": ({"counter"}, set()),
    "grain_granularity_ceiling": ({"gauge"}, set()),
}

SAVED = 'sum(grain_visual_tokens_saved_total{job="grain"})'


@dataclass
class Run:
    grain: Grain
    prom: Prometheus
    low_usage: dict
    saved_after_low: float
    tally: Tally


@pytest.fixture(scope="module")
def run(binary, require):
    require("prometheus")
    work = workdir("grain-prom-")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        grain = Grain(work)
        stack.callback(grain.stop)
        prom = Prometheus(work, [f"127.0.0.1:{grain.port}"], interval_s=1.0)
        stack.callback(prom.stop)
        yield _drive(grain, prom)


def _drive(grain: Grain, prom: Prometheus) -> Run:
    # Prometheus has scraped the idle server: nothing saved yet.
    assert prom.wait_for_value(SAVED, 0) == 0
    tally = Tally()
    low = complete(grain.url, grain.model, image_messages("low"), tally, max_tokens=4)
    low_usage = low["usage"]
    d = low_usage["prompt_tokens_details"]
    saved_after_low = prom.wait_for_value(SAVED, d["visual_tokens_full"] - d["visual_tokens"])

    # Mixed traffic: every granularity source, text only, a larger (multi-crop) image, a failure.
    for detail in ("high", "auto", "low", "auto", "high"):
        complete(grain.url, grain.model, image_messages(detail), tally, max_tokens=6)
    complete(grain.url, grain.model, image_messages("auto", 672, 500), tally, max_tokens=6)
    complete(grain.url, grain.model, image_messages("high"), tally, max_tokens=4, granularity=144)
    for i in range(6):
        complete(
            grain.url, grain.model, text_messages(f"Say hello {i}."), tally, max_tokens=12, temperature=0
        )
    status, body, _ = http(
        "POST", f"{grain.url}/v1/chat/completions", {"model": "no-such-model", "messages": text_messages()}
    )
    assert status == 404, body
    # Everything is in Prometheus once the success counter shows every request.
    prom.wait_for_value('sum(grain_request_success_total{job="grain"})', tally.requests)
    prom.wait_for_value('sum(grain_request_failure_total{job="grain"})', 1)
    return Run(grain, prom, low_usage, saved_after_low, tally)


def test_saved_tokens_are_positive_after_a_detail_low_request(run):
    d = run.low_usage["prompt_tokens_details"]
    assert d["granularity"] == [36] and d["granularity_source"] == ["detail"]
    assert run.saved_after_low == d["visual_tokens_full"] - d["visual_tokens"] > 0
    print(f"\nPrometheus: grain_visual_tokens_saved_total = {run.saved_after_low:g} after one detail=low")


def test_counters_in_prometheus_match_client_totals(run):
    p, t = run.prom, run.tally
    assert p.scalar(SAVED) == t.visual_saved
    assert p.scalar('sum(grain_visual_tokens_total{kind="selected"})') == t.visual_selected
    assert p.scalar('sum(grain_visual_tokens_total{kind="full"})') == t.visual_full
    assert p.scalar("sum(grain_request_prompt_tokens_sum)") == t.prompt_tokens
    assert p.scalar("sum(grain_request_generation_tokens_sum)") == t.completion_tokens
    assert p.scalar("sum(grain_time_to_first_token_seconds_count)") == t.requests
    assert p.scalar('sum(grain_request_failure_total{error="model_not_found"})') == 1
    by_choice = {
        (s["metric"]["granularity"], s["metric"]["source"]): float(s["value"][1])
        for s in p.query("grain_granularity_selected_total > 0")
    }
    assert by_choice == {k: float(v) for k, v in t.granularity.items()}
    assert {source for _, source in by_choice} >= {"detail", "router", "request"}
    print(
        f"\nPrometheus totals: {t.requests} requests, {t.visual_saved} of {t.visual_full} visual tokens saved"
    )


def test_ttft_quantiles_from_prometheus(run):
    expr = "histogram_quantile({q}, sum by (le) (rate(grain_time_to_first_token_seconds_bucket[5m])))"
    p50 = run.prom.scalar(expr.format(q=0.5))
    p99 = run.prom.scalar(expr.format(q=0.99))
    assert p50 is not None and p99 is not None
    assert 0 < p50 <= p99
    # No first token can come later than its whole request as the client timed it; the quantile
    # interpolates inside a bucket, so the bound is the first bucket edge above that time.
    bounds = run.grain.metrics().bucket_bounds("grain_time_to_first_token_seconds")
    edge = min(b for b in bounds if b >= run.tally.max_wall_s)
    assert p99 <= edge, (p99, run.tally.max_wall_s, edge)
    print(f"\nPrometheus: TTFT p50 = {p50 * 1e3:.1f} ms, p99 = {p99 * 1e3:.1f} ms")


def test_every_dashboard_query_evaluates_with_data(run):
    empty = []
    for panel in dashboard.load():
        for target in panel.targets:
            expr = dashboard.expand(target.expr, rate_interval="5m", range_="10m")
            if not run.prom.query(expr):
                empty.append(f"{panel.title}: {expr}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


def test_dashboard_savings_stat_matches_client_totals(run):
    [panel] = [p for p in dashboard.load() if p.title == "Visual token savings"]
    expr = dashboard.expand(panel.targets[0].expr, rate_interval="5m", range_="10m")
    got = run.prom.scalar(expr)
    want = run.tally.visual_saved / run.tally.visual_full
    # increase() extrapolates to the window's edges; both counters share their scrape times.
    assert got is not None and math.isclose(got, want, rel_tol=0.02), (got, want)


def test_every_design_family_is_exported_with_its_labels(run):
    expo = run.grain.metrics()
    problems = []
    for family, (kinds, label_names) in DESIGN_FAMILIES.items():
        kind = expo.types.get(family)
        if kind not in kinds:
            problems.append(f"{family}: type {kind}, want one of {sorted(kinds)}")
            continue
        sample = family + ("_count" if kind == "histogram" else "")
        seen = {k for labels in expo.series(sample) for k in labels}
        if seen != label_names:
            problems.append(f"{family}: labels {sorted(seen)}, want {sorted(label_names)}")
    assert not problems, "\n".join(problems)
    assert {ls["kind"] for ls in expo.series("grain_visual_tokens_total")} == {"selected", "full"}
    sources = {ls["source"] for ls in expo.series("grain_granularity_selected_total")}
    assert sources >= {"router", "detail", "request"}


def test_promtool_check_metrics_is_clean(run, require):
    require("promtool")
    text = run.grain.metrics_text()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_readme_metrics_table_matches_the_exporter(run):
    fresh = metrics_table.render(run.grain.metrics())
    in_readme = metrics_table.readme_table()
    assert in_readme is not None, "README.md lacks the metrics-table markers"
    assert in_readme == fresh, (
        "README metrics table is stale: run tests/observability/metrics_table.py --write"
    )
