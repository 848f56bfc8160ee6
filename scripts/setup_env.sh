#!/usr/bin/env bash
# Create (or update) the project virtualenv in .venv with everything the tests and the local stack need.
# Idempotent: skips pip when the requirement files have not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.requirements.sha256"
want=$(cat requirements.*.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "installing requirements into $VENV (first time: a few minutes)" >&2
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.dev.txt
"$VENV/bin/python" -m pip install -q --no-deps -r requirements.nodeps.txt
echo "$want" >"$stamp"
