#!/bin/sh
# Starts the MLflow tracking server behind MLflow's own authentication (`mlflow server --app-name
# basic-auth`, HTTP basic auth; MLflow 3.17). Mounted from the ConfigMap safedrift-mlflow-scripts and
# run by the Deployment safedrift-mlflow (mlflow.yaml); tests/infra/test_mlflow_auth.py runs this same
# file against a server on 127.0.0.1. Arguments are passed on to `mlflow server`.
#
# Every secret comes from the environment (Kubernetes Secrets, via secretKeyRef), none from a file in
# the repository, and none is put on a command line (visible to `ps`):
#   MLFLOW_BACKEND_STORE_URI         runs/metrics store; read by `mlflow server` itself
#   MLFLOW_AUTH_DATABASE_URI         users/permissions store (default: the backend store; MLflow keeps
#                                    its own tables and migration history there, alembic_version_auth)
#   MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD  read by MLflow: the admin user, created on the first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY   CSRF key; the same for every worker and replica
#   MLFLOW_CLIENT_USERNAME/_PASSWORD the non-admin login of the Ray pods (their MLFLOW_TRACKING_*):
#                                    created here if missing, its stored password reset to the
#                                    Secret's value at every start (rotation)
#   MLFLOW_AUTH_CONFIG_PATH          where the auth config is written; it holds the database URI, so
#                                    the Deployment puts it on a memory-backed emptyDir, mode 0600
set -eu

die() {
  echo "start-mlflow.sh: $*" >&2
  exit 2
}

for var in MLFLOW_BACKEND_STORE_URI MLFLOW_AUTH_CONFIG_PATH MLFLOW_AUTH_ADMIN_USERNAME \
  MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_CLIENT_USERNAME MLFLOW_CLIENT_PASSWORD; do
  eval "value=\${$var:-}"
  [ -n "$value" ] || die "$var is not set or empty: infra/README.md (step 2) creates the Secrets it comes from"
done
[ "$MLFLOW_CLIENT_USERNAME" != "$MLFLOW_AUTH_ADMIN_USERNAME" ] ||
  die "MLFLOW_CLIENT_USERNAME equals the admin's name: the Ray pods must not log in as the admin"
MLFLOW_AUTH_DATABASE_URI="${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}"
case "$MLFLOW_AUTH_DATABASE_URI" in
  # configparser would read % as interpolation: generate passwords hex-only (infra/README.md).
  *%*) die "the auth database URI contains '%': use a hex-only database password" ;;
esac
export MLFLOW_AUTH_DATABASE_URI

umask 077
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
# READ for every signed-in user; whoever creates an experiment gets MANAGE on it (MLflow's rule), so
# the Ray pods' login can log its sweeps without being an admin.
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = $MLFLOW_AUTH_DATABASE_URI
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

# The client login, before any worker starts (so two workers do not race to create it).
python - <<'PY'
import os

from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

store = SqlAlchemyStore()
store.init_db(os.environ["MLFLOW_AUTH_DATABASE_URI"])
user, pw = os.environ["MLFLOW_CLIENT_USERNAME"], os.environ["MLFLOW_CLIENT_PASSWORD"]
if not store.has_user(user):
    store.create_user(user, pw, is_admin=False)
    print(f"start-mlflow.sh: created the client user {user!r}")
elif not store.authenticate_user(user, pw):
    # The Secret was rotated since the last start: store its new value.
    store.update_user(user, pw)
    print(f"start-mlflow.sh: updated the password of the client user {user!r}")
PY

exec mlflow server --app-name basic-auth "$@"
