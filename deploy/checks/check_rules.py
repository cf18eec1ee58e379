"""Checks deploy/prometheus/alerts.yml beyond `promtool check rules` (which checks syntax only).

Every Grain metric an alert uses must exist in DESIGN.md section 5 and be used as its type
allows (promql.py); the only other series allowed are Prometheus' `up` and the
kube-state-metrics series listed below. Each rule needs a severity, a summary, a description
and a `for` duration, and the alerts the operations issue asks for must all be present.

Usage: check_rules.py ALERTS.yml [--repo DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

import promql

FOREIGN_SERIES = {"up", "kube_deployment_status_replicas_unavailable"}
REQUIRED_ALERTS = {
    "GrainHighErrorRate": "high error rate",
    "GrainQueueSaturated": "queue saturation",
    "GrainKvCacheNearFull": "KV cache near full",
    "GrainNotReady": "replicas not ready",
    "GrainTargetDown": "scrape target down",
}
SEVERITIES = {"info", "warning", "critical"}
_SERIES = re.compile(r"\b([a-z_:][a-z0-9_:]*)\s*[{\[]")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def check(doc: dict) -> tuple[list[str], set[str]]:
    """Returns (problems, Grain families referenced)."""
    problems: list[str] = []
    families: set[str] = set()
    seen: set[str] = set()
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record") or "?"
            where = f"rule {name}"
            seen.add(name)
            expr = rule.get("expr", "")
            problems.extend(f"{where}: {p}" for p in promql.lint(expr))
            for series in set(_SERIES.findall(expr)) - _KEYWORDS:
                if not series.startswith("grain_") and series not in FOREIGN_SERIES:
                    problems.append(f"{where}: uses {series}, which is neither Grain's nor allowed")
            families |= {found[0] for n in promql.metric_names(expr) if (found := promql.resolve(n))}
            if "alert" not in rule:
                continue
            if rule.get("labels", {}).get("severity") not in SEVERITIES:
                problems.append(f"{where}: labels.severity must be one of {sorted(SEVERITIES)}")
            for key in ("summary", "description"):
                if not rule.get("annotations", {}).get(key):
                    problems.append(f"{where}: no {key} annotation")
            if not rule.get("for"):
                problems.append(f"{where}: no `for` duration (a single bad scrape would page)")
    for alert, what in REQUIRED_ALERTS.items():
        if alert not in seen:
            problems.append(f"no alert {alert} ({what})")
    return problems, families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rules", type=Path)
    parser.add_argument("--repo", type=Path, help="repository root, to cross-check the Rust metrics module")
    args = parser.parse_args()
    try:
        doc = yaml.safe_load(args.rules.read_text())
    except (OSError, yaml.YAMLError) as err:
        print(f"FAIL {args.rules}: {err}")
        return 1
    problems, families = check(doc)
    if args.repo:
        rust = promql.rust_metric_sources(args.repo)
        if rust is not None:
            problems.extend(
                f"alerts use {n}, which the Rust metrics module does not define"
                for n in promql.missing_from_rust(families, rust)
            )
    for problem in problems:
        print(f"FAIL {args.rules}: {problem}")
    if not problems:
        print(f"ok   {args.rules}: {len(families)} Grain metric families, all required alerts present")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
