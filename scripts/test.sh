#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests (numerical parity against committed
# transformers/PyTorch fixtures included), then the OpenAI-SDK end-to-end tests and the deployment
# checks when their tools are installed (scripts/install-test-tools.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace)"
cargo test --workspace --locked

if [[ -x .venv-e2e/bin/python && -f tests/e2e/test_openai_sdk.py ]]; then
  echo "== end-to-end: official openai SDK against grain serve"
  cargo build --locked -p grain
  GRAIN_BIN="$PWD/target/debug/grain" .venv-e2e/bin/python -m pytest -q tests/e2e
else
  echo "== skipping end-to-end SDK tests (run scripts/install-test-tools.sh)"
fi

if [[ -x scripts/check-deploy.sh && -d .venv-deploy ]]; then
  echo "== deployment artefacts"
  scripts/check-deploy.sh
else
  echo "== skipping deployment checks (run scripts/install-test-tools.sh)"
fi
