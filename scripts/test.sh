#!/usr/bin/env bash
# Sets everything up and runs the default test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash infra/ci-setup.sh
# Local Ray clusters in tests run without token auth; the DeepSpeed op cache is the project's.
export RAY_AUTH_MODE=disabled TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
.venv/bin/ruff check .
exec .venv/bin/pytest -ra "$@"
