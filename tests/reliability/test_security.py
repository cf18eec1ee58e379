"""API-key authentication and what the server writes down: every way of presenting a wrong key is
a 401 with an OpenAI error, the probes stay open, and no key material — the configured key, or
the wrong keys clients sent — appears anywhere in the log, even at debug level.

(The comparison itself is constant-time by construction — SHA-256 digests compared with
`subtle::ConstantTimeEq` against every configured key, see crates/grain-server/src/auth.rs —
which a timing test on a shared CI machine could not show reliably.)
"""

from __future__ import annotations

import secrets

import pytest

import rel_payloads as p
from rel_harness import assert_openai_error

KEY = "sk-grain-" + secrets.token_hex(16)
OTHER_KEY = "sk-grain-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def grain(start_grain):
    return start_grain("--log-filter", "debug", env={"GRAIN_API_KEYS": f"{KEY},{OTHER_KEY}"})


WRONG = {
    "missing": None,
    "bearer-without-key": "Bearer",
    "wrong-key-same-length": "Bearer sk-grain-" + secrets.token_hex(16),
    "prefix-of-key": f"Bearer {KEY[:-1]}",
    "key-plus-suffix": f"Bearer {KEY}x",
    "basic-scheme": f"Basic {KEY}",
    "no-scheme": KEY,
    "key-in-other-case": f"Bearer {KEY.upper()}",
}


@pytest.mark.parametrize("name", list(WRONG))
def test_wrong_credentials_get_401(grain, name):
    header = WRONG[name]
    headers = {} if header is None else {"authorization": header}
    for method, path, body in (
        ("POST", "/v1/chat/completions", p.chat("hi")),
        ("GET", "/v1/models", None),
    ):
        resp = grain.client.request(method, path, json=body, headers=headers)
        assert_openai_error(resp, 401, "invalid_api_key")
        assert resp.headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
def test_each_configured_key_works(grain, key):
    for scheme in ("Bearer", "bearer"):
        resp = grain.client.post(
            "/v1/chat/completions", json=p.chat("hi"), headers={"authorization": f"{scheme} {key}"}
        )
        assert resp.status_code == 200, resp.text


def test_probes_and_metrics_need_no_key(grain):
    for path in ("/health", "/ready", "/metrics"):
        assert grain.client.get(path).status_code == 200, path


def test_no_key_material_in_the_log(grain):
    # Make sure every kind of request above has been logged before reading the log.
    grain.client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
    log = grain.log_text()
    assert "request" in log  # the log is being written at all
    secrets_sent = [KEY, OTHER_KEY, KEY.upper(), WRONG["wrong-key-same-length"][7:]]
    for secret in secrets_sent:
        # The random part alone: a key logged in pieces or with another prefix still shows.
        fragment = secret[-24:]
        assert fragment not in log, f"key material ending {fragment[-4:]} found in the log"
        assert fragment.encode().hex() not in log
    assert "[redacted]" in log  # the configuration dump names the keys without showing them
