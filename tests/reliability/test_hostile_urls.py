"""Hostile image URLs with http(s) fetching switched on: every non-public target, written in every
spelling, is refused before any connection is made (a local HTTP server counts connections and
must see none), other schemes are refused, and the allow-list holds. A second server that allows
private targets fetches from the same local server, which shows the refusals are the guard's doing.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rel_payloads as p
from rel_harness import assert_openai_error

PNG = p.png(32, 24)


class _ImageHandler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).hits += 1
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def guarded(start_grain):
    return start_grain("--allow-http-images", "--image-fetch-timeout-s", "3")


def _targets(port: int) -> list[tuple[str, str]]:
    """(name, URL) of targets the SSRF guard must refuse."""
    return [
        ("loopback-literal", f"http://127.0.0.1:{port}/cat.png"),
        ("loopback-other", f"http://127.8.9.10:{port}/cat.png"),
        ("localhost-name", f"http://localhost:{port}/cat.png"),
        ("loopback-v6", f"http://[::1]:{port}/cat.png"),
        ("v4-mapped-loopback", f"http://[::ffff:127.0.0.1]:{port}/cat.png"),
        ("decimal-loopback", f"http://2130706433:{port}/cat.png"),
        ("hex-loopback", f"http://0x7f000001:{port}/cat.png"),
        ("short-loopback", f"http://127.1:{port}/cat.png"),
        ("unspecified", f"http://0.0.0.0:{port}/cat.png"),
        ("cloud-metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        ("cloud-metadata-https", "https://169.254.169.254/"),
        ("link-local-v6", "http://[fe80::1]/x.png"),
        ("private-10", "http://10.0.0.1/x.png"),
        ("private-172", "http://172.16.5.4/x.png"),
        ("private-192", "http://192.168.1.1/x.png"),
        ("cgnat", "http://100.64.0.1/x.png"),
        ("unique-local-v6", "http://[fd00::1]/x.png"),
        ("nat64-metadata", "http://[64:ff9b::a9fe:a9fe]/x.png"),
        ("broadcast", "http://255.255.255.255/x.png"),
    ]


TARGET_NAMES = [name for name, _ in _targets(1)]


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_non_public_targets_are_refused_without_connecting(guarded, image_host, name):
    url = dict(_targets(image_host))[name]
    before = _ImageHandler.hits
    resp = guarded.client.post("/v1/chat/completions", json=p.with_images(url))
    err = assert_openai_error(resp, 400, "invalid_image")
    assert "non-public address" in err["message"], err
    assert _ImageHandler.hits == before


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "file://localhost/etc/shadow",
        "ftp://example.com/cat.png",
        "gopher://127.0.0.1:70/_x",
        "dict://127.0.0.1:11211/stat",
        "jar:http://example.com/a.jar!/x.png",
        "http://",
        "http:///nohost.png",
    ],
)
def test_other_schemes_and_broken_urls_are_refused(guarded, url):
    resp = guarded.client.post("/v1/chat/completions", json=p.with_images(url))
    assert_openai_error(resp, 400, "invalid_image")


def test_allow_list_refuses_other_hosts(start_grain, image_host):
    listed = start_grain(
        "--allow-http-images", "--image-fetch-allow-private",
        "--image-fetch-allowed-hosts", "images.example.com",
    )
    resp = listed.client.post(
        "/v1/chat/completions", json=p.with_images(f"http://127.0.0.1:{image_host}/cat.png")
    )
    err = assert_openai_error(resp, 400, "invalid_image")
    assert "allow-list" in err["message"], err


def test_the_same_urls_are_fetched_when_private_targets_are_allowed(start_grain, image_host):
    trusting = start_grain("--allow-http-images", "--image-fetch-allow-private")
    before = _ImageHandler.hits
    resp = trusting.client.post(
        "/v1/chat/completions", json=p.with_images(f"http://127.0.0.1:{image_host}/cat.png")
    )
    assert resp.status_code == 200, resp.text[:300]
    assert _ImageHandler.hits == before + 1


def test_fetching_is_off_by_default(start_grain, image_host):
    default = start_grain()
    resp = default.client.post(
        "/v1/chat/completions", json=p.with_images(f"http://127.0.0.1:{image_host}/cat.png")
    )
    err = assert_openai_error(resp, 400, "invalid_image")
    assert "disabled" in err["message"], err
