"""Runs the real `grain serve` binary for the reliability suite and reads its state from outside.

Starting and stopping is tests/common/grain_server.py, shared with the other suites: the binary
comes from `GRAIN_BIN` (default: target/release/grain, then target/debug/grain). Each `Grain` is one
process on a free loopback port with its own log file, in JSON; configuration is passed as flags
(the environment is cleared of `GRAIN_*` first so a developer's shell cannot change a test).
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from grain_server import GrainServer, HarnessError  # noqa: E402

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


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


class Grain(GrainServer):
    """One `grain serve --log-format json FLAGS...` process, with an httpx client on its URL."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None, wait: bool = True):
        self.flags = list(flags)
        super().__init__(["--log-format", "json", *self.flags], env=env, name="grain-rel", wait=False)
        self.client = httpx.Client(base_url=self.url, timeout=120)
        if wait:
            try:
                self.wait_ready()
            except HarnessError:
                self.stop()  # the process is gone already; this closes the client
                raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        code = super().stop(sig, timeout)
        self.client.close()
        return code

    # --- observation ------------------------------------------------------------------------

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
