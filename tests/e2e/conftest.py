"""Starts `grain serve` on a free loopback port for the end-to-end tests.

The process handling is tests/common/grain_server.py, shared with the other suites: the binary
comes from `GRAIN_BIN` (default: target/release/grain, then target/debug/grain); it is run as
`GRAIN_BIN serve --host 127.0.0.1 --port PORT` with the environment of the test run minus `GRAIN_*`
configuration, plus what a test adds (e.g. `GRAIN_API_KEYS`). `GRAIN_E2E_STARTUP_S` bounds the
wait for `/ready` (default 180 s: a model may load slowly).
"""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
import grain_server  # noqa: E402


def http(method: str, url: str, body: dict | None = None, timeout: float = 10.0):
    """(status, parsed JSON or text) without raising on HTTP errors."""
    status, parsed, _ = grain_server.http(method, url, body, timeout)
    return status, parsed


class GrainServer(grain_server.GrainServer):
    """A ready server for one test or module; a missing binary skips, a failed start fails."""

    def __init__(self, extra_env: dict[str, str] | None = None):
        if grain_server.grain_bin() is None:
            pytest.skip("no grain binary: build it or set GRAIN_BIN")
        try:
            super().__init__(env=extra_env, name="grain-e2e")
        except grain_server.HarnessError as e:
            pytest.fail(str(e))

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        # No retries: a retried 5xx or 429 would hide what the server answered.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)


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
