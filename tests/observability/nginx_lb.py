"""nginx (Debian package) as a load balancer in front of Grain replicas, on loopback.

It stands in for a Kubernetes Service: round-robin over the replicas, and passive health
checking, since open-source nginx has no active health checks. The directives that matter,
and why (docs/deployment.md shows them for a real deployment):

- `proxy_next_upstream error http_503 http_429 non_idempotent`: a replica that is draining
  (SIGTERM) answers new completions with 503 `shutting_down`, an overloaded one with 429, a dead
  one refuses the connection. In all three cases Grain has not started the request, so nginx may
  retry it on the next replica even though POST is not idempotent. `timeout` is deliberately not
  in the list: a slow generation must not be run twice.
- `max_fails=1 fail_timeout=...`: one such answer takes the replica out of the rotation for
  `fail_timeout`, so a draining replica stops receiving new requests after the first.
- `proxy_buffering off`: SSE streams reach the client token by token.
- `proxy_read_timeout` above Grain's `request_timeout_s`, and a body limit at least Grain's.

The access log records, per request, every upstream tried and its status, which is how the
scale-out test tells which replica served what without trusting Grain's own counters.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from harness import HarnessError, ManagedProcess, find_tool, free_port, http, wait_until

# Fields of one access-log line, tab-separated.
LOG_FORMAT = "$request_method\\t$request_uri\\t$status\\t$upstream_addr\\t$upstream_status"


def render_config(prefix: Path, listen_port: int, upstreams: list[str], fail_timeout_s: int = 30) -> str:
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout={fail_timeout_s}s;" for u in upstreams)
    # As root, nginx's workers switch to `nobody`; the temp directories below are created by
    # the master for that user. Running as a normal user, `user` is ignored (with a notice).
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 256; }}
http {{
    log_format grain "{LOG_FORMAT}";
    access_log {prefix}/access.log grain;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream grain {{
{servers}
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        client_max_body_size 32m;
        client_body_buffer_size 1m;

        location / {{
            proxy_pass http://grain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_read_timeout 660s;
            proxy_next_upstream error http_503 http_429 non_idempotent;
            proxy_next_upstream_tries {len(upstreams)};
        }}
    }}
}}
"""


class Nginx(ManagedProcess):
    """nginx in the foreground with a generated config; stopped by its own pid."""

    def __init__(self, workdir: Path, upstreams: list[str]):
        binary = find_tool("nginx")
        if binary is None:
            raise HarnessError("nginx is not installed (scripts/install-deploy-tools.sh installs it)")
        prefix = workdir / "nginx"
        prefix.mkdir()
        # Workers run as `nobody` when nginx starts as root; they must reach the temp paths.
        os.chmod(workdir, 0o755)
        os.chmod(prefix, 0o755)
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = prefix / "nginx.conf"
        conf.write_text(render_config(prefix, self.port, upstreams))
        # -e: the error log before the config is read (the default path may not be writable).
        argv = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise HarnessError(f"nginx -t failed:\n{check.stderr}")
        self._spawn([*argv, "-g", "daemon off;"], prefix / "stdout.log")
        try:
            wait_until("nginx to listen", self._listening, 30)
        except HarnessError as e:
            self.stop(signal.SIGKILL)
            raise HarnessError(f"{e}\n{self.error_log()}") from None

    def _listening(self) -> bool:
        if not self.alive():
            raise HarnessError(f"nginx exited with {self.proc.returncode}:\n{self.error_log()}")
        # Any HTTP answer proves nginx listens (it passes /health on to a replica).
        return http("GET", f"{self.url}/health", timeout=2)[0] > 0

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def access_log(self) -> list[dict[str, object]]:
        """One entry per request: method, uri, final status, and every (upstream, status) tried."""
        entries = []
        for line in (self.prefix / "access.log").read_text().splitlines():
            method, uri, status, addrs, statuses = line.split("\t")
            tried = list(zip(addrs.split(", "), statuses.split(", "), strict=True))
            entries.append({"method": method, "uri": uri, "status": int(status), "tried": tried})
        return entries

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 30) -> int:
        # SIGQUIT is nginx's graceful stop.
        return super().stop(sig, timeout)
