"""Processes and helpers shared by the observability tests and the dashboard preview run.

Everything runs on loopback, on free ports, with its files in a temporary directory:

- `Grain`: one `grain serve` replica (the embedded tiny model unless told otherwise), started and
  stopped by tests/common/grain_server.py, which the other suites share;
- `Prometheus`: the Debian `prometheus` server with a generated config that scrapes given targets;
- `parse_metrics`: the Prometheus text format, parsed just enough to sum series by name and labels.

Only the standard library is used, so the same venv as the end-to-end tests runs these.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
# free_port, http, HarnessError and ManagedProcess are used by nginx_lb and the tests from here too.
from grain_server import GrainServer, HarnessError, ManagedProcess, free_port, http  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def find_tool(name: str) -> str | None:
    """A tool on PATH, or in /usr/sbin (where Debian puts nginx) when PATH lacks it."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def wait_until(what: str, predicate, timeout: float, interval: float = 0.1):
    """Polls `predicate` until it returns something truthy; raises `HarnessError` on timeout.

    The timeout only bounds a hang: nothing asserts how fast anything happens. A `HarnessError`
    from the predicate (a process died, a query is wrong) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except OSError as e:  # not listening yet, connection reset: try again
            last_error = e
        time.sleep(interval)
    raise HarnessError(
        f"timed out after {timeout} s waiting for {what}" + (f" ({last_error})" if last_error else "")
    )


# --------------------------------------------------------------------------------------------
# Requests


def png(width: int = 64, height: int = 48, variant: int = 0) -> bytes:
    """An RGB gradient PNG, written with zlib and struct (no imaging library needed).

    Different `variant`s are different images (the encoder cache keys on the image's bytes).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 4 % 256, y * 5 % 256, (128 + variant) % 256))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def image_messages(
    detail: str = "auto",
    width: int = 64,
    height: int = 48,
    text: str = "Describe the image.",
    variant: int = 0,
) -> list:
    url = "data:image/png;base64," + base64.b64encode(png(width, height, variant)).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ],
        }
    ]


def text_messages(text: str = "Say hello.") -> list:
    return [{"role": "user", "content": text}]


@dataclass
class Tally:
    """Client-side totals of successful completions: what the servers' metrics must add up to."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    visual_selected: int = 0
    visual_full: int = 0
    # (granularity, source) -> images
    granularity: dict[tuple[str, str], int] = field(default_factory=dict)
    # Longest client-observed request time, seconds: an upper bound for any server-side latency.
    max_wall_s: float = 0.0

    def add(self, usage: dict, wall_s: float) -> None:
        self.requests += 1
        self.prompt_tokens += usage["prompt_tokens"]
        self.completion_tokens += usage["completion_tokens"]
        details = usage.get("prompt_tokens_details") or {}
        self.visual_selected += details.get("visual_tokens", 0)
        self.visual_full += details.get("visual_tokens_full", 0)
        for g, source in zip(
            details.get("granularity", []), details.get("granularity_source", []), strict=True
        ):
            key = (str(g), source)
            self.granularity[key] = self.granularity.get(key, 0) + 1
        self.max_wall_s = max(self.max_wall_s, wall_s)

    @property
    def visual_saved(self) -> int:
        return self.visual_full - self.visual_selected


def complete(base_url: str, model: str, messages: list, tally: Tally | None = None, **params) -> dict:
    """One non-streaming chat completion that must succeed; its usage goes into `tally`."""
    start = time.monotonic()
    status, body, _ = http(
        "POST",
        f"{base_url}/v1/chat/completions",
        {"model": model, "messages": messages, **params},
        timeout=300,
    )
    wall = time.monotonic() - start
    if status != 200:
        raise HarnessError(f"completion failed with {status}: {body}")
    if tally is not None:
        tally.add(body["usage"], wall)
    return body


# --------------------------------------------------------------------------------------------
# Metrics text format

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Exposition:
    """A parsed `/metrics` page: samples, and the `# TYPE`/`# HELP` of each family."""

    samples: list[tuple[str, dict[str, str], float]]
    types: dict[str, str]
    helps: dict[str, str]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        return sum(
            v
            for n, ls, v in self.samples
            if n == name and all(ls.get(k) == want for k, want in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]

    def bucket_bounds(self, histogram: str) -> list[float]:
        return sorted({float(ls["le"]) for ls in self.series(f"{histogram}_bucket")})


def parse_metrics(text: str) -> Exposition:
    samples, types, helps = [], {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("# HELP "):
            _, _, name, *rest = line.split(" ", 3)
            helps[name] = rest[0] if rest else ""
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            if not m:
                raise HarnessError(f"unparsable metrics line: {line!r}")
            labels = dict(_LABEL.findall(m.group("labels") or ""))
            samples.append((m.group("name"), labels, float(m.group("value"))))
    return Exposition(samples, types, helps)


# --------------------------------------------------------------------------------------------
# Processes


class Grain(GrainServer):
    """`grain serve ARGS...` on a free loopback port, its log `workdir/NAME.log`; ready when
    `/ready` answers 200, with `model` the id it serves."""

    def __init__(self, workdir: Path, name: str = "grain", args: list[str] | None = None):
        super().__init__(args or [], name=name, log_path=workdir / f"{name}.log")
        self.model = self.model_id()

    def metrics_text(self) -> str:
        status, text, _ = http("GET", f"{self.url}/metrics", timeout=10)
        if status != 200 or not isinstance(text, str):
            raise HarnessError(f"{self.name} /metrics answered {status}")
        return text

    def metrics(self) -> Exposition:
        return parse_metrics(self.metrics_text())


class Prometheus(ManagedProcess):
    """The Debian `prometheus` server scraping `targets` every `interval_s` seconds, job `grain`."""

    def __init__(self, workdir: Path, targets: list[str], interval_s: float = 1.0):
        binary = find_tool("prometheus")
        if binary is None:
            raise HarnessError("prometheus is not installed (scripts/install-deploy-tools.sh installs it)")
        self.name = "prometheus"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.interval_s = interval_s
        config = workdir / "prometheus.yml"
        # Prometheus durations take integer units.
        interval = f"{round(interval_s * 1000)}ms"
        # JSON is YAML: no YAML library needed to write the config.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "scrape_configs": [
                        {
                            "job_name": "grain",
                            "scrape_interval": interval,
                            "scrape_timeout": interval,
                            "static_configs": [{"targets": targets}],
                        }
                    ],
                },
                indent=2,
            )
        )
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._spawn(argv, workdir / "prometheus.log")
        self._wait_http_ok(f"{self.url}/-/ready", 60, interval=0.1)

    def api(self, path: str, **params: str) -> object:
        """GET /api/v1/<path>; returns `data`, raises `HarnessError` with Prometheus' error."""
        query = urllib.parse.urlencode(params)
        status, body, _ = http("GET", f"{self.url}/api/v1/{path}?{query}", timeout=30)
        if not isinstance(body, dict) or body.get("status") != "success":
            raise HarnessError(f"prometheus {path} {params} answered {status}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def scalar(self, expr: str) -> float | None:
        """The value of a query that returns at most one series; `None` when it returns none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise HarnessError(f"{expr} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_for_value(self, expr: str, want: float, timeout: float = 60) -> float:
        """Waits until the latest scrape makes `expr` equal `want` (counters settle after traffic)."""

        def settled():
            got = self.scalar(expr)
            return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9) and [got]

        return wait_until(f"{expr} == {want}", settled, timeout, interval=self.interval_s / 2)[0]

    def targets_up(self) -> int:
        active = self.api("targets", state="active")["activeTargets"]
        return sum(1 for t in active if t["health"] == "up")


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
