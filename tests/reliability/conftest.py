"""Fixtures of the reliability suite: each module starts the `grain serve` processes it needs.

Run: `cargo build -p grain && .venv-e2e/bin/python -m pytest -q tests/reliability`
(`GRAIN_BIN` picks another binary; see rel_harness.py).
"""

from __future__ import annotations

import pytest

from rel_harness import Grain, HarnessError


@pytest.fixture(scope="module")
def start_grain():
    """`start_grain(*flags, env=...)` → a ready `Grain`, stopped when the module ends."""
    started: list[Grain] = []

    def start(*flags: str, env: dict[str, str] | None = None, wait: bool = True) -> Grain:
        try:
            grain = Grain(*flags, env=env, wait=wait)
        except HarnessError as e:
            pytest.fail(str(e))
        started.append(grain)
        return grain

    yield start
    for grain in started:
        grain.stop()
