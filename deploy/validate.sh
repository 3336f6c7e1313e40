#!/bin/sh
# Validates deploy/ offline (see validate.py). Makes its virtualenv on first use, from PyPI:
# $MIRROR_DEPLOY_VENV, default target/deploy-venv. Needs kubectl (for `kubectl kustomize`) and
# python3-venv.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv=${MIRROR_DEPLOY_VENV:-$here/../target/deploy-venv}
pins="kubernetes-validate==1.37.0"

if ! "$venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet $pins
fi
exec "$venv/bin/python" "$here/validate.py"
