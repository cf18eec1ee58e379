"""Reads `grain.json`'s panels and turns their queries into plain PromQL.

Grafana substitutes its variables before it sends a query to Prometheus; outside Grafana we do the
same here, so a real Prometheus can evaluate exactly the dashboard's expressions (the observability
test checks every one of them; `render_preview.py` plots them). Standard library only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "grain.json"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    id: int
    type: str
    title: str
    # Grafana's 24-column grid: x, y, w, h.
    x: int
    y: int
    w: int
    h: int
    unit: str
    description: str
    targets: tuple[Target, ...]


def load(path: Path = DASHBOARD) -> list[Panel]:
    """Every panel in grid order (rows included, as panels of type `row` with no targets)."""
    raw = json.loads(path.read_text())
    panels = []
    for p in raw["panels"]:
        grid = p["gridPos"]
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        targets = tuple(
            Target(expr=t["expr"], legend=t.get("legendFormat", ""))
            for t in p.get("targets", [])
            if t.get("expr")
        )
        panels.append(
            Panel(
                p["id"],
                p["type"],
                p["title"],
                grid["x"],
                grid["y"],
                grid["w"],
                grid["h"],
                unit,
                p.get("description", ""),
                targets,
            )
        )
    return sorted(panels, key=lambda p: (p.y, p.x))


# Grafana's `[$__rate_interval]` is max(4 x scrape interval, step + scrape interval); `[$__range]`
# is the dashboard's time range. Multi-value variables set to "All" become their `allValue`.
def expand(expr: str, rate_interval: str, range_: str, variables: dict[str, str] | None = None) -> str:
    """`expr` with Grafana's variables replaced: `$job` and `$instance` default to `.*` (All)."""
    values = {"job": ".*", "instance": ".*", **(variables or {})}
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    out = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), out)
    if "$" in out:
        raise ValueError(f"unexpanded variable in {out!r}")
    return out


def legend(template: str, labels: dict[str, str]) -> str:
    """A series' legend the way Grafana writes it: `{{label}}` replaced by the label's value."""
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
