"""Runs the real `grain serve` binary for the reliability suite and reads its state from outside.

The binary comes from `GRAIN_BIN` (default: target/release/grain, then target/debug/grain). Each
`Grain` is one process on a free loopback port with its own log file; configuration is passed as
flags (the environment is cleared of `GRAIN_*` first so a developer's shell cannot change a test).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = float(os.environ.get("GRAIN_E2E_STARTUP_S", "180"))
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class HarnessError(RuntimeError):
    pass


def grain_bin() -> Path:
    explicit = os.environ.get("GRAIN_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HarnessError(f"GRAIN_BIN={explicit} is not a file")
        return path
    for candidate in (REPO / "target/release/grain", REPO / "target/debug/grain"):
        if candidate.is_file():
            return candidate
    raise HarnessError("no grain binary: run `cargo build -p grain` or set GRAIN_BIN")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition → {(name, sorted label pairs): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Grain:
    """One `grain serve` process."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None, wait: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.flags = list(flags)
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
        run_env.update(env or {})
        fd, self.log_path = tempfile.mkstemp(prefix="grain-rel-", suffix=".log")
        self._log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(
            [str(grain_bin()), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-format", "json", *self.flags],
            env=run_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.client = httpx.Client(base_url=self.url, timeout=120)
        if wait:
            self.wait_ready()

    # --- life cycle -------------------------------------------------------------------------

    def wait_ready(self, timeout: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"grain exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.client.get("/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise HarnessError(f"grain not ready after {timeout} s:\n{self.log_tail()}")

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
        self.client.close()
        self._log.close()
        return self.proc.returncode

    # --- observation ------------------------------------------------------------------------

    def log_text(self) -> str:
        self._log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"level": "RAW", "fields": {"message": line}})
        return records

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))

    def metrics(self) -> dict:
        resp = self.client.get("/metrics", timeout=10)
        resp.raise_for_status()
        return parse_metrics(resp.text)

    def metric(self, name: str, **labels: str) -> float:
        """One sample; with no labels given, the sum over every label set of `name`."""
        samples = self.metrics()
        if labels:
            return samples[(name, tuple(sorted(labels.items())))]
        return sum(v for (n, _), v in samples.items() if n == name)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response is `status` with an OpenAI error body; returns `error`."""
    assert resp.status_code == status, f"want {status}, got {resp.status_code}: {resp.text[:400]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], err
    assert isinstance(err.get("type"), str) and err["type"], err
    assert "param" in err and (err["param"] is None or isinstance(err["param"], str)), err
    assert "code" in err and (err["code"] is None or isinstance(err["code"], str)), err
    if code is not None:
        assert err["code"] == code, err
    return err


def read_sse(resp: httpx.Response) -> tuple[list[dict], list[str]]:
    """(JSON chunks, error event payloads) of a finished SSE response; requires `[DONE]`."""
    return read_sse_lines(resp.iter_lines())


def read_sse_lines(lines) -> tuple[list[dict], list[str]]:
    chunks, errors, event, done = [], [], None, False
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
            elif event == "error":
                errors.append(data)
            else:
                chunks.append(json.loads(data))
            event = None
    assert done, "stream ended without [DONE]"
    return chunks, errors


def stream_text(chunks: list[dict]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
