#!/usr/bin/env bash
# System tools that tests/infra need, installed if missing. Called from .ci/run (as root).
#   - kubectl with its built-in kustomize: renders infra/overlays/* (Debian: kubernetes-client;
#     a kubectl that is already installed, e.g. from the Google Cloud SDK, is used as it is).
#   - PostgreSQL server binaries (initdb, pg_ctl): tests/infra/test_mlflow_postgres.py starts a
#     throwaway cluster of its own in a temp dir, so no system service is started here.
#   - Chromium (Debian's `chromium`): tests/report render the HTML report headless and check that
#     every figure loads.
# hadolint, kubernetes-validate and jsonschema come from the Python dev extras (the venv).
#
# Idempotent: installs nothing when everything is there. Never fails the CI run by itself: if apt
# is unavailable it warns, and the tests that need a missing tool fail with a clear message (CI=true).
set -u

warn() { echo "infra/ci-setup.sh: WARNING: $*" >&2; }

have_kustomize() {
  { command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; } ||
    command -v kustomize >/dev/null 2>&1
}
have_postgres() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

have_chromium() { command -v chromium >/dev/null 2>&1; }

missing=()
have_postgres || missing+=(postgresql)
have_chromium || missing+=(chromium)
if ! have_kustomize; then
  if command -v kubectl >/dev/null 2>&1; then
    # Another package owns /usr/bin/kubectl (dpkg would refuse to overwrite it).
    warn "kubectl is installed but has no 'kustomize' subcommand; install a newer kubectl or kustomize"
  else
    missing+=(kubernetes-client)
  fi
fi

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    warn "not root: cannot install ${missing[*]}"
  elif ! command -v apt-get >/dev/null 2>&1; then
    warn "apt-get not available: cannot install ${missing[*]}"
  else
    export DEBIAN_FRONTEND=noninteractive
    echo "infra/ci-setup.sh: installing ${missing[*]}"
    if ! apt-get update -qq; then
      warn "apt-get update failed; trying to install from the current package lists"
    fi
    # policy-rc.d may forbid starting the packaged PostgreSQL service in containers: harmless,
    # the tests run their own server.
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      warn "apt-get install ${missing[*]} failed"
    fi
  fi
fi

have_kustomize && echo "infra/ci-setup.sh: kustomize: $(kubectl version --client 2>/dev/null | tr '\n' ' ')" ||
  warn "kustomize still missing: tests/infra rendering tests will fail under CI=true"
have_postgres && echo "infra/ci-setup.sh: postgres: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')" ||
  warn "PostgreSQL still missing: tests/infra/test_mlflow_postgres.py will fail under CI=true"
have_chromium && echo "infra/ci-setup.sh: chromium: $(chromium --version 2>/dev/null)" ||
  warn "chromium still missing: tests/report rendering tests will fail under CI=true"
# The PostgreSQL server refuses to run as root; the test runs it as the 'postgres' user the package creates.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  warn "no 'postgres' user: the MLflow/PostgreSQL test cannot start a server as root"
fi
exit 0
