"""Processes and helpers shared by the observability tests and the dashboard preview run.

Everything runs on loopback, on free ports, with its files in a temporary directory:

- `Grain`: one `grain serve` replica (the embedded tiny model unless told otherwise);
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
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# A model may load slowly (a real checkpoint); the tiny one is ready in seconds.
STARTUP_S = float(os.environ.get("GRAIN_E2E_STARTUP_S", "180"))


class HarnessError(RuntimeError):
    """A helper process failed to start or answered something unusable."""


def grain_bin() -> Path | None:
    """`GRAIN_BIN`, else the release build, else the debug build; `None` if there is none."""
    explicit = os.environ.get("GRAIN_BIN")
    if explicit:
        return Path(explicit)
    for candidate in (REPO / "target/release/grain", REPO / "target/debug/grain"):
        if candidate.is_file():
            return candidate
    return None


def find_tool(name: str) -> str | None:
    """A tool on PATH, or in /usr/sbin (where Debian puts nginx) when PATH lacks it."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(
    method: str,
    url: str,
    body: dict | None = None,
    timeout: float = 60.0,
) -> tuple[int, object, dict[str, str]]:
    """(status, parsed JSON or text, headers), without raising on HTTP error statuses."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), dict(e.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


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


class ManagedProcess:
    """A child process with its output in a log file, stopped by its own pid only."""

    proc: subprocess.Popen
    log_path: Path

    def _spawn(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Grain(ManagedProcess):
    """`grain serve` on a free loopback port; ready when `/ready` answers 200."""

    def __init__(self, workdir: Path, name: str = "grain", args: list[str] | None = None):
        binary = grain_bin()
        if binary is None or not binary.is_file():
            raise HarnessError("no grain binary: build it (cargo build -p grain) or set GRAIN_BIN")
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The test's own GRAIN_* settings must not leak into the replica's configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
        argv = [str(binary), "serve", "--host", "127.0.0.1", "--port", str(self.port), *(args or [])]
        self._spawn(argv, workdir / f"{name}.log", env)
        try:
            wait_until(f"{name} /ready", self._ready, STARTUP_S)
        except HarnessError as e:
            self.stop(signal.SIGKILL)
            raise HarnessError(f"{e}\n{self.log_tail()}") from None
        _, models, _ = http("GET", f"{self.url}/v1/models")
        self.model = models["data"][0]["id"]

    def _ready(self) -> bool:
        if not self.alive():
            raise HarnessError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return http("GET", f"{self.url}/ready", timeout=2)[0] == 200

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
        try:
            wait_until("prometheus /-/ready", self._ready, 60)
        except HarnessError as e:
            self.stop(signal.SIGKILL)
            raise HarnessError(f"{e}\n{self.log_tail()}") from None

    def _ready(self) -> bool:
        if not self.alive():
            raise HarnessError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
        return http("GET", f"{self.url}/-/ready", timeout=2)[0] == 200

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
