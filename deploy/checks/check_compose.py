"""Checks that docker/compose.yaml is wired to the files in deploy/ (no Docker engine needed).

`docker-compose config` validates the file against the Compose schema; this checks what the
schema cannot: bind-mounted files exist, Prometheus scrapes the grain service on its port and
loads the alert rules, Grafana's provisioning points at the mounted dashboard and at the
prometheus service, and grain's stop grace period outlasts the drain.

Usage: check_compose.py COMPOSE_FILE
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

DRAIN_TIMEOUT_S = 30  # Grain's default server.drain_timeout_s; the image sets no other
GRAIN_PORT = 8000


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        raise ValueError(f"unparseable duration {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def _binds(service: dict, base: Path) -> dict[str, Path]:
    """Container path -> host path for bind mounts given as relative host paths."""
    out = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":") if isinstance(volume, str) else []
        if len(parts) >= 2 and parts[0].startswith("."):
            out[parts[1]] = (base / parts[0]).resolve()
    return out


def check(compose_path: Path) -> list[str]:
    problems: list[str] = []
    base = compose_path.parent
    services = yaml.safe_load(compose_path.read_text()).get("services", {})
    for name in ("grain", "prometheus", "grafana"):
        if name not in services:
            problems.append(f"no service {name}")
    if problems:
        return problems
    binds = {name: _binds(svc, base) for name, svc in services.items()}
    for name, mounts in binds.items():
        for target, source in mounts.items():
            if not source.exists():
                problems.append(f"{name}: bind source {source} for {target} does not exist")

    grain = services["grain"]
    if f"{GRAIN_PORT}:{GRAIN_PORT}" not in [str(p) for p in grain.get("ports", [])]:
        problems.append(f"grain: port {GRAIN_PORT} is not published")
    try:
        if _seconds(grain.get("stop_grace_period", "10s")) <= DRAIN_TIMEOUT_S:
            problems.append(f"grain: stop_grace_period must exceed the {DRAIN_TIMEOUT_S}s drain")
    except ValueError as err:
        problems.append(f"grain: {err}")

    prom_cfg_path = binds["prometheus"].get("/etc/prometheus/prometheus.yml")
    if prom_cfg_path is None or not prom_cfg_path.exists():
        problems.append("prometheus: deploy/prometheus/prometheus.yml is not mounted")
    else:
        prom = yaml.safe_load(prom_cfg_path.read_text())
        targets = [
            t
            for job in prom.get("scrape_configs", [])
            if job.get("job_name") == "grain"
            for sc in job.get("static_configs", [])
            for t in sc.get("targets", [])
        ]
        if targets != [f"grain:{GRAIN_PORT}"]:
            problems.append(f"prometheus: job grain scrapes {targets}, expected ['grain:{GRAIN_PORT}']")
        for rule_file in prom.get("rule_files", []):
            if f"/etc/prometheus/{rule_file}" not in binds["prometheus"]:
                problems.append(f"prometheus: rule file {rule_file} is not mounted next to prometheus.yml")

    provisioning = binds["grafana"].get("/etc/grafana/provisioning")
    if provisioning is None:
        problems.append("grafana: provisioning directory is not mounted")
        return problems
    for path in sorted((provisioning / "dashboards").glob("*.yaml")):
        for provider in yaml.safe_load(path.read_text()).get("providers", []):
            folder = provider.get("options", {}).get("path", "")
            if not any(
                target.startswith(folder + "/") and target.endswith(".json") for target in binds["grafana"]
            ):
                problems.append(
                    f"grafana: provider {provider.get('name')} reads {folder}, where no dashboard is mounted"
                )
    urls = [
        ds.get("url", "")
        for path in sorted((provisioning / "datasources").glob("*.yaml"))
        for ds in yaml.safe_load(path.read_text()).get("datasources", [])
        if ds.get("type") == "prometheus"
    ]
    if urls != ["http://prometheus:9090"]:
        problems.append(f"grafana: Prometheus datasource urls {urls}, expected ['http://prometheus:9090']")
    return problems


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) == 2 else None
    if path is None:
        print(__doc__)
        return 2
    problems = check(path)
    for problem in problems:
        print(f"FAIL {path}: {problem}")
    if not problems:
        print(f"ok   {path}: mounts, scrape target, rule files, Grafana provisioning and grace period agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
