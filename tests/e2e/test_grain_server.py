"""The shared launcher (tests/common/grain_server.py) passes what a suite asks for to `grain serve`.

The SDK tests only use its defaults; these check the rest against the real binary: a model
directory written by `grain make-tiny`, a TOML configuration, environment variables, flags (which
win over both), the test run's own `GRAIN_*` variables kept out, and a start that fails.
"""

from __future__ import annotations

import signal

import pytest

import grain_server
from conftest import http

CHAT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def binary():
    path = grain_server.grain_bin()
    if path is None:
        pytest.skip("no grain binary: build it or set GRAIN_BIN")
    return path


def _choices(url: str, model: str, n: int) -> tuple[int, object]:
    body = {"model": model, "messages": CHAT, "max_tokens": 2, "n": n}
    return http("POST", f"{url}/v1/chat/completions", body, timeout=60)


def test_model_dir_config_env_and_flags_reach_the_server(binary, tmp_path, monkeypatch):
    # A GRAIN_* variable of the test run itself must not reach the child.
    monkeypatch.setenv("GRAIN_SERVED_MODEL_NAME", "leaked-from-the-test-run")
    model = grain_server.make_tiny(tmp_path / "tiny-avg", binary=binary)
    with grain_server.GrainServer(model=model, log_path=tmp_path / "plain.log") as plain:
        # With no name configured, the id is the model directory's name, not the embedded model's.
        assert plain.model_id() == "tiny-avg"
    assert plain.returncode == 0, plain.log_tail()

    server = grain_server.GrainServer(
        ["--max-n", "3"],
        model=model,
        config_toml='[server]\nserved_model_name = "from-config"\nmax_n = 2\n',
        env={"GRAIN_MODEL_ALIASES": "from-env"},
        log_path=tmp_path / "configured.log",
    )
    try:
        status, models = http("GET", f"{server.url}/v1/models")
        assert status == 200, models
        # The name from the file first, then the alias from the environment.
        assert [m["id"] for m in models["data"]] == ["from-config", "from-env"]
        # The alias is accepted in requests; the flag's max_n (3) beats the file's (2).
        status, body = _choices(server.url, "from-env", 3)
        assert status == 200, body
        assert len(body["choices"]) == 3
        status, body = _choices(server.url, "from-config", 4)
        assert status == 400, body
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
    assert not server.alive()


def test_a_server_that_exits_at_start_reports_its_log(binary, tmp_path):
    with pytest.raises(grain_server.StartError) as err:
        grain_server.GrainServer(["--no-such-flag"], log_path=tmp_path / "bad.log")
    message = str(err.value)
    assert "exited with 2" in message  # clap's usage-error exit code
    assert "--no-such-flag" in message  # from the log tail: clap names the unknown argument


def test_a_server_not_ready_in_time_is_killed(binary, tmp_path):
    # No start-up takes 0 s: the first probe finds nothing listening, so the wait gives up.
    server = grain_server.GrainServer(log_path=tmp_path / "slow.log", wait=False)
    with pytest.raises(grain_server.StartError, match="not ready after 0 s"):
        server.wait_ready(timeout=0)
    assert server.returncode == -signal.SIGKILL


def test_a_failing_readiness_probe_does_not_leak_the_server(binary, tmp_path, monkeypatch):
    server = grain_server.GrainServer(log_path=tmp_path / "probe.log", wait=False)

    def broken_probe(url: str, timeout: float = 2.0) -> int | None:
        raise KeyError(url)

    monkeypatch.setattr(grain_server, "get_status", broken_probe)
    with pytest.raises(KeyError):
        server.wait_ready()
    assert server.returncode == -signal.SIGKILL
