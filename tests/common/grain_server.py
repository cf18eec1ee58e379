"""Starts and stops the real `grain serve` binary for the Python test suites.

One module for tests/e2e, tests/observability and tests/reliability and the scripts beside them.
It is not installed: each suite's harness puts this directory on `sys.path` and imports
`grain_server` (see tests/common/README.md).

- `grain_bin()` / `require_grain_bin()`: the binary under test: `GRAIN_BIN`, else
  target/release/grain, else target/debug/grain.
- `GrainServer`: one `grain serve` on a free loopback port with its output in a log file, ready when
  `/ready` answers 200. The model, a TOML configuration, extra flags and environment variables are
  the caller's; `stop()` sends SIGTERM, then SIGKILL after a grace period, and returns the exit code.
- `ManagedProcess`: the same process handling for other helpers (Prometheus, nginx).
- `make_tiny()`: a tiny deterministic checkpoint directory (`grain make-tiny`).
- `http()`: one request with the standard library, without raising on HTTP error statuses.

The child's environment is the test run's minus every `GRAIN_*` variable (a developer's shell must
not change a test), plus what the caller passes. `GRAIN_E2E_STARTUP_S` bounds the wait for `/ready`
(default 180 s: a real checkpoint may load slowly; the embedded tiny model is ready in seconds).
Only the standard library is used, so every suite's venv can import this.
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
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = float(os.environ.get("GRAIN_E2E_STARTUP_S", "180"))
HOST = "127.0.0.1"


class HarnessError(RuntimeError):
    """A helper process is missing, failed to start, or answered something unusable."""


class StartError(HarnessError):
    """A process exited or was not ready in time; the message ends with the tail of its log."""


def grain_bin() -> Path | None:
    """`GRAIN_BIN` (whether or not it exists), else the release build, else the debug build."""
    explicit = os.environ.get("GRAIN_BIN")
    if explicit:
        return Path(explicit)
    for candidate in (REPO / "target/release/grain", REPO / "target/debug/grain"):
        if candidate.is_file():
            return candidate
    return None


def require_grain_bin() -> Path:
    """`grain_bin()`, or a `HarnessError` saying why there is no binary to run."""
    path = grain_bin()
    if path is None:
        raise HarnessError("no grain binary: build it (cargo build -p grain) or set GRAIN_BIN")
    if not path.is_file():
        raise HarnessError(f"GRAIN_BIN={path} is not a file")
    return path


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without `GRAIN_*` variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
    env.update(extra or {})
    return env


def http(
    method: str, url: str, body: dict | None = None, timeout: float = 60.0
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


def get_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of `GET url`, or `None` when nothing answers (not listening yet, reset)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, HTTPException):
        return None


def make_tiny(out: Path, layout: str = "avg", seed: int = 0, binary: Path | None = None) -> Path:
    """Writes `grain make-tiny`'s deterministic checkpoint (`avg` or `hf` layout) to `out`."""
    argv = [str(binary or require_grain_bin()), "make-tiny", "--layout", layout]
    argv += ["--out", str(out), "--seed", str(seed)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise HarnessError(f"grain make-tiny exited with {done.returncode}:\n{done.stderr}")
    return Path(out)


class ManagedProcess:
    """A child process with stdout and stderr in a log file, signalled by its own pid only."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def _spawn(
        self, argv: Sequence[str | Path], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = Path(log_path)
        # The child keeps its own copy of the descriptor; this process only reads the file.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(a) for a in argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
            )

    def _wait_http_ok(self, url: str, timeout: float, interval: float = 0.05) -> None:
        """Polls `GET url` until it answers 200; `StartError` if the process exits or time runs out.

        A process that is not ready is killed before the error (or any other exception, Ctrl-C
        included) leaves: the caller has no handle to stop it with. The timeout only bounds a
        hang: nothing asserts how fast a process starts.
        """
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self.alive():
                    raise StartError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                if get_status(url) == 200:
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(interval)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.stop(signal.SIGKILL)
        raise StartError(f"{self.name} not ready after {timeout} s ({url}):\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code, or `None` while the process runs."""
        return self.proc.poll()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Sends `sig` (if still running), SIGKILL after `timeout` s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class GrainServer(ManagedProcess):
    """`grain serve --host 127.0.0.1 --port PORT [--model M] [--config C] ARGS...`, started ready.

    - `args`: further `grain serve` flags (they win over the configuration and environment);
    - `env`: variables added to the child's environment (e.g. `GRAIN_API_KEYS`);
    - `model`: a checkpoint directory or Hub id (default: the embedded tiny model);
    - `config_toml`: configuration text, written next to the log and passed as `--config`;
    - `binary`, `port`, `log_path`: default to `require_grain_bin()`, a free port, a temp file;
    - `wait=False` returns at once; call `wait_ready()` before sending requests.

    Raises `HarnessError` when there is no binary and `StartError` when the server exits or is not
    ready within `startup_s` (the server is killed first; the message has its log tail).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        model: str | Path | None = None,
        config_toml: str | None = None,
        binary: Path | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        name: str = "grain",
        startup_s: float = STARTUP_S,
        wait: bool = True,
    ):
        self.binary = Path(binary) if binary is not None else require_grain_bin()
        if not self.binary.is_file():
            raise HarnessError(f"grain binary {self.binary} is not a file")
        self.name = name
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.startup_s = startup_s
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
            log_path = Path(tmp)
        self.argv = [str(self.binary), "serve", "--host", HOST, "--port", str(self.port)]
        if model is not None:
            self.argv += ["--model", str(model)]
        if config_toml is not None:
            config = Path(log_path).with_suffix(".toml")
            config.write_text(config_toml)
            self.argv += ["--config", str(config)]
        self.argv += list(args)
        self.env = server_env(env)
        self._spawn(self.argv, Path(log_path), self.env)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Returns once `/ready` answers 200 (raises `StartError` otherwise, see the class)."""
        self._wait_http_ok(f"{self.url}/ready", self.startup_s if timeout is None else timeout)

    def model_id(self) -> str:
        """The first id `/v1/models` lists."""
        status, body, _ = http("GET", f"{self.url}/v1/models", timeout=10)
        if status != 200 or not isinstance(body, dict):
            raise HarnessError(f"{self.name} /v1/models answered {status}: {body}")
        return body["data"][0]["id"]
