"""Fixtures for the observability tests: a work directory and skips for missing tools.

The tests need the `grain` binary (GRAIN_BIN, or target/{release,debug}/grain) and the Debian
`prometheus` and `nginx` packages (scripts/install-deploy-tools.sh installs both). Without them a
test is skipped with the reason, never failed: `scripts/test.sh` runs this directory only where
the tools are installed, so a skip there would show up in its output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "common"))
sys.path.insert(0, str(HERE.parents[1] / "deploy" / "grafana"))

from grain_server import grain_bin  # noqa: E402
from harness import find_tool  # noqa: E402


@pytest.fixture(scope="module")
def require():
    """`require("nginx")` skips the test when the tool is not installed."""

    def check(tool: str) -> None:
        if find_tool(tool) is None:
            pytest.skip(f"{tool} is not installed (run scripts/install-deploy-tools.sh)")

    return check


@pytest.fixture(scope="module")
def binary() -> Path:
    path = grain_bin()
    if path is None or not path.is_file():
        pytest.skip("no grain binary: build it (cargo build -p grain) or set GRAIN_BIN")
    return path
