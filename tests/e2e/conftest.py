"""Starts `grain serve` on a free loopback port for the end-to-end tests.

The binary comes from `GRAIN_BIN` (default: target/release/grain, then target/debug/grain).
It is run as `GRAIN_BIN serve --host 127.0.0.1 --port PORT` with the environment of the test
run minus `GRAIN_*` configuration, plus what a test adds (e.g. `GRAIN_API_KEYS`).
`GRAIN_E2E_STARTUP_S` bounds the wait for `/ready` (default 180 s: a model may load slowly).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = float(os.environ.get("GRAIN_E2E_STARTUP_S", "180"))


def grain_bin() -> Path:
    explicit = os.environ.get("GRAIN_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            pytest.fail(f"GRAIN_BIN={explicit} is not a file")
        return path
    for candidate in (REPO / "target/release/grain", REPO / "target/debug/grain"):
        if candidate.is_file():
            return candidate
    pytest.skip("no grain binary: build it or set GRAIN_BIN")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0):
    """(status, parsed JSON or text) without raising on HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class GrainServer:
    def __init__(self, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
        env.update(extra_env or {})
        self.log = tempfile.NamedTemporaryFile(prefix="grain-e2e-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(grain_bin()), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def log_tail(self, lines: int = 40) -> str:
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"grain exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http("GET", f"{self.url}/ready", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"grain not ready after {STARTUP_S} s:\n{self.log_tail()}")

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        # No retries: a retried 5xx or 429 would hide what the server answered.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    srv = GrainServer()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def model_card(server):
    status, body = http("GET", f"{server.url}/v1/models")
    assert status == 200, body
    return body["data"][0]


@pytest.fixture(scope="module")
def model_id(model_card):
    return model_card["id"]
