"""Grain's metric catalogue and a light PromQL linter for the deployment artefacts.

The catalogue mirrors DESIGN.md section 5 (names, types, labels). The dashboard, the alert rules
and the HPA's adapter rule may only reference these families, and must use each the way its
type allows: histogram_quantile over `_bucket` with `le` kept, rate/increase over counters and
histogram series, never over gauges.

This is not a PromQL parser. It recognises the shapes our artefacts use (selectors,
`sum by (...)`, rate/increase, histogram_quantile) and is strict about them; an expression it
cannot make sense of is reported rather than passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Family:
    kind: str | None  # None: DESIGN.md does not fix the type, so artefacts must not use it
    labels: frozenset[str] = frozenset()
    # Allowed values per label where the set is closed by design.
    values: tuple[tuple[str, frozenset[str]], ...] = ()


def _f(metric_type: str | None, *labels: str, **values: set[str]) -> Family:
    return Family(metric_type, frozenset(labels), tuple((k, frozenset(v)) for k, v in values.items()))


# DESIGN.md section 5, with the grain_ prefix.
CATALOGUE: dict[str, Family] = {
    "grain_time_to_first_token_seconds": _f(HISTOGRAM),
    "grain_inter_token_latency_seconds": _f(HISTOGRAM),
    "grain_e2e_request_latency_seconds": _f(HISTOGRAM),
    "grain_request_queue_time_seconds": _f(HISTOGRAM),
    "grain_request_prompt_tokens": _f(HISTOGRAM),
    "grain_request_generation_tokens": _f(HISTOGRAM),
    "grain_request_success_total": _f(COUNTER, "finish_reason"),
    "grain_request_failure_total": _f(COUNTER, "error"),
    "grain_num_requests_running": _f(GAUGE),
    "grain_num_requests_waiting": _f(GAUGE),
    "grain_kv_cache_usage_ratio": _f(GAUGE),
    "grain_num_preemptions_total": _f(COUNTER),
    "grain_batch_size": _f(None),
    "grain_step_duration_seconds": _f(HISTOGRAM, "phase"),
    "grain_visual_tokens_total": _f(COUNTER, "kind", kind={"selected", "full"}),
    "grain_visual_tokens_saved_total": _f(COUNTER),
    "grain_granularity_selected_total": _f(
        COUNTER, "granularity", "source", source={"router", "detail", "request", "ceiling"}
    ),
    # Issue 10: the load-adaptive granularity ceiling (visual tokens per crop).
    "grain_granularity_ceiling": _f(GAUGE),
    "grain_router_duration_seconds": _f(HISTOGRAM),
    "grain_vision_encoder_duration_seconds": _f(HISTOGRAM),
    "grain_encoder_cache_hits_total": _f(COUNTER),
    "grain_encoder_cache_misses_total": _f(COUNTER),
    "grain_prefix_cache_hit_tokens_total": _f(COUNTER),
}

# Labels Prometheus attaches to every scraped series: static config / ServiceMonitor targets.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})

HIST_SUFFIXES = ("_bucket", "_sum", "_count")

_IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SELECTOR = re.compile(r"\b(grain_[a-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(rf'\s*({_IDENT})\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_RANGE_FN = re.compile(
    r"\b(rate|irate|increase|delta|deriv|avg_over_time|max_over_time)\s*\(\s*(grain_[a-z0-9_]+)"
)
_HQ = re.compile(r"histogram_quantile\s*\(\s*([0-9.]+)\s*,")
_VAR = re.compile(r"\$(?:\{)?([A-Za-z_][A-Za-z0-9_]*)")


def resolve(series: str) -> tuple[str, Family, str] | None:
    """Maps a series name to (family name, family, suffix) or None if it is not ours."""
    if series in CATALOGUE:
        return series, CATALOGUE[series], ""
    for suffix in HIST_SUFFIXES:
        base = series[: -len(suffix)]
        if series.endswith(suffix) and CATALOGUE.get(base, Family(None)).kind == HISTOGRAM:
            return base, CATALOGUE[base], suffix
    return None


def metric_names(expr: str) -> set[str]:
    """Every grain_* series name an expression references."""
    return {m.group(1) for m in _SELECTOR.finditer(expr)}


def lint(expr: str, variables: frozenset[str] = frozenset()) -> list[str]:
    """Problems with one PromQL expression; empty when it is fine.

    `variables` are the Grafana template variables the expression may use ($name); Grafana's
    built-ins ($__rate_interval, $__range, ...) are always allowed.
    """
    problems: list[str] = []
    for var in _VAR.findall(expr):
        if not var.startswith("__") and var not in variables:
            problems.append(f"uses undefined variable ${var}")

    used_labels: set[str] = set()
    for m in _SELECTOR.finditer(expr):
        series, matchers = m.group(1), m.group(2)
        found = resolve(series)
        if found is None:
            problems.append(f"{series} is not a Grain metric (DESIGN.md section 5)")
            continue
        name, fam, suffix = found
        if fam.kind is None:
            problems.append(f"{name}: its type is not fixed by DESIGN.md, do not depend on it")
            continue
        allowed = fam.labels | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        used_labels |= allowed
        if matchers:
            body = matchers[1:-1]
            consumed = "".join(x.group(0) for x in _MATCHER.finditer(body))
            if consumed.strip() != body.strip():
                problems.append(f"{series}: cannot parse label matchers {matchers}")
            for label, op, value in _MATCHER.findall(body):
                if label not in allowed:
                    problems.append(f"{series}: no label {label!r} (has {sorted(fam.labels)})")
                closed = dict(fam.values).get(label)
                if closed is not None and op == "=" and value not in closed:
                    problems.append(f"{series}: {label}={value!r} is not one of {sorted(closed)}")

    for fn, series in _RANGE_FN.findall(expr):
        found = resolve(series)
        if found is None or found[1].kind is None:
            continue
        _, fam, suffix = found
        if fam.kind == HISTOGRAM and suffix == "":
            problems.append(f"{series} is a histogram: use its _bucket/_sum/_count series")
        elif fn in ("rate", "irate", "increase") and fam.kind == GAUGE:
            problems.append(f"{fn}() over {series}, which is a gauge, not a counter")
        elif fn in ("avg_over_time", "max_over_time", "delta", "deriv") and fam.kind != GAUGE:
            problems.append(f"{fn}() over {series}, which is a {fam.kind}: use rate()")

    for m in _HQ.finditer(expr):
        q = float(m.group(1))
        if not 0.0 < q < 1.0:
            problems.append(f"histogram_quantile({q}) is outside (0, 1)")
        inner = expr[m.end() :]
        series = next(iter(_SELECTOR.finditer(inner)), None)
        if series is None or not series.group(1).endswith("_bucket"):
            problems.append("histogram_quantile needs a _bucket series")
        by = _BY.search(inner)
        if by is None or "le" not in {s.strip() for s in by.group(1).split(",")}:
            problems.append("histogram_quantile must aggregate with `by (le, ...)`")

    for m in _BY.finditer(expr):
        for label in (s.strip() for s in m.group(1).split(",")):
            if label and used_labels and label not in used_labels:
                problems.append(f"groups by {label!r}, which none of its metrics carries")
    return problems


def rust_metric_sources(repo: Path) -> str | None:
    """The text of the Rust files that define the metrics, once that module exists.

    Returns None while no crate mentions a catalogue name, so the deployment checks can run
    before (or without) the server's metrics module.
    """
    texts = []
    for path in sorted(repo.glob("crates/*/src/**/*.rs")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "time_to_first_token_seconds" in text:
            texts.append(text)
    return "\n".join(texts) if texts else None


def missing_from_rust(names: set[str], rust: str) -> list[str]:
    """Catalogue families referenced by an artefact that the Rust metrics module never names.

    The module may spell names with or without the `grain_` prefix (a namespace option).
    """
    missing = []
    for name in sorted(names):
        found = resolve(name)
        family = found[0] if found else name
        short = family.removeprefix("grain_")
        if not re.search(rf'"(grain_)?{re.escape(short)}"', rust):
            missing.append(family)
    return missing
