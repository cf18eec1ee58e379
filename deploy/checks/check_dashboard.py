"""Structural validation of the Grafana dashboard (Grafana itself cannot run on the dev machine).

Checks what Grafana would reject or silently mis-render, and what our conventions require:
every panel queries Prometheus through the ${datasource} variable, ids are unique, panels sit
inside the 24-column grid without overlapping, each query is well-formed for the metric types
(see promql.py) and only references Grain metrics, every template variable used is defined,
and the panels the operations issue asks for are all there.

Usage: python check_dashboard.py DASHBOARD.json [--repo DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import promql

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "piechart", "gauge", "bargauge", "table", "text", "row"}
GRID_COLUMNS = 24

# Families the dashboard must show, one group per panel topic of issue 6 (request rate and
# errors, TTFT and ITL, tokens/s, queue and batch, KV, visual tokens and savings, granularity
# mix, router and vision time).
REQUIRED = {
    "requests/s": {"grain_request_success_total"},
    "errors": {"grain_request_failure_total"},
    "TTFT p50/p99": {"grain_time_to_first_token_seconds"},
    "inter-token latency p50/p99": {"grain_inter_token_latency_seconds"},
    "tokens/s": {"grain_request_generation_tokens"},
    "queue depth and running batch": {"grain_num_requests_waiting", "grain_num_requests_running"},
    "KV usage": {"grain_kv_cache_usage_ratio"},
    "visual tokens selected vs full, savings": {
        "grain_visual_tokens_total",
        "grain_visual_tokens_saved_total",
    },
    "granularity mix by source": {"grain_granularity_selected_total"},
    "router and vision time": {
        "grain_router_duration_seconds",
        "grain_vision_encoder_duration_seconds",
    },
}


def _walk(panels: list) -> list[dict]:
    """All panels, including those nested in collapsed rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_walk(panel.get("panels", [])))
    return out


def _grid(panel: dict, where: str, problems: list[str]) -> tuple[int, int, int, int] | None:
    grid = panel.get("gridPos")
    if not isinstance(grid, dict):
        problems.append(f"{where}: no gridPos")
        return None
    try:
        x, y, w, h = (grid[k] for k in ("x", "y", "w", "h"))
    except KeyError as missing:
        problems.append(f"{where}: gridPos lacks {missing}")
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y, w, h)):
        problems.append(f"{where}: gridPos values must be integers")
        return None
    if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_COLUMNS:
        problems.append(f"{where}: gridPos {grid} is outside the {GRID_COLUMNS}-column grid")
        return None
    return x, y, w, h


def _variables(dashboard: dict, problems: list[str]) -> frozenset[str]:
    variables = dashboard.get("templating", {}).get("list", [])
    names = frozenset(v.get("name", "") for v in variables)
    ds = [v for v in variables if v.get("name") == "datasource"]
    if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
        problems.append("templating: needs a variable `datasource` of type datasource, query prometheus")
    for var in variables:
        if var.get("type") == "query":
            where = f"variable ${var.get('name')}"
            if var.get("datasource") != DATASOURCE:
                problems.append(f"{where}: datasource must be {DATASOURCE}")
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else query or ""
            problems.extend(f"{where}: {p}" for p in promql.lint(text, names))
    return names


def check(dashboard: dict) -> tuple[list[str], set[str]]:
    """Returns (problems, Grain families referenced)."""
    problems: list[str] = []
    for key in ("uid", "title"):
        if not dashboard.get(key):
            problems.append(f"dashboard: missing {key}")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append("dashboard: schemaVersion must be an integer >= 36 (Grafana 9+)")
    if dashboard.get("id") is not None:
        problems.append("dashboard: id must be null so provisioning assigns one")
    variables = _variables(dashboard, problems)

    panels = _walk(dashboard.get("panels", []))
    if not panels:
        problems.append("dashboard: no panels")
    seen_ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    families: set[str] = set()
    for index, panel in enumerate(panels):
        title = panel.get("title") or ""
        where = f"panel {index} {title!r}"
        if not title:
            problems.append(f"{where}: no title")
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in seen_ids:
            problems.append(f"{where}: id {pid!r} missing or not unique")
        seen_ids.add(pid)
        ptype = panel.get("type")
        if ptype not in PANEL_TYPES:
            problems.append(f"{where}: unknown panel type {ptype!r}")
        box = _grid(panel, where, problems)
        if box:
            x, y, w, h = box
            for cx in range(x, x + w):
                for cy in range(y, y + h):
                    if (cx, cy) in cells:
                        problems.append(f"{where}: overlaps {cells[(cx, cy)]} at ({cx},{cy})")
                        break
                    cells[(cx, cy)] = where
                else:
                    continue
                break
        if ptype in ("row", "text"):
            if ptype == "row" and box and (box[2] != GRID_COLUMNS or box[3] != 1):
                problems.append(f"{where}: a row spans the full width with height 1")
            continue
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource must be {DATASOURCE}")
        if not panel.get("description"):
            problems.append(f"{where}: no description (shown as the panel's help)")
        if "unit" not in panel.get("fieldConfig", {}).get("defaults", {}):
            problems.append(f"{where}: fieldConfig.defaults.unit not set")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no queries")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or not all(ref_ids):
            problems.append(f"{where}: refIds {ref_ids} must be present and unique")
        for target in targets:
            twhere = f"{where} query {target.get('refId')}"
            if target.get("datasource", DATASOURCE) != DATASOURCE:
                problems.append(f"{twhere}: datasource must be {DATASOURCE}")
            expr = target.get("expr", "")
            names = promql.metric_names(expr)
            if not names:
                problems.append(f"{twhere}: references no Grain metric: {expr!r}")
            problems.extend(f"{twhere}: {p}" for p in promql.lint(expr, variables))
            families |= {found[0] for n in names if (found := promql.resolve(n))}

    for topic, needed in REQUIRED.items():
        if not needed <= families:
            problems.append(f"dashboard: no panel shows {topic} ({sorted(needed - families)})")
    return problems, families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboard", type=Path)
    parser.add_argument("--repo", type=Path, help="repository root, to cross-check the Rust metrics module")
    args = parser.parse_args()
    try:
        dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        print(f"FAIL {args.dashboard}: {err}")
        return 1
    problems, families = check(dashboard)
    if args.repo:
        rust = promql.rust_metric_sources(args.repo)
        if rust is None:
            print("note: no Rust metrics module yet; metric names checked against DESIGN.md only")
        else:
            problems.extend(
                f"dashboard uses {name}, which the Rust metrics module does not define"
                for name in promql.missing_from_rust(families, rust)
            )
    for problem in problems:
        print(f"FAIL {args.dashboard}: {problem}")
    if problems:
        return 1
    count = len(_walk(dashboard["panels"]))
    print(f"ok   {args.dashboard}: {count} panels, {len(families)} Grain metric families, all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
