#!/usr/bin/env bash
# One service in the foreground for local development, with the local stack's tiny-model environment.
#   bash scripts/run_service.sh NAME [--reload]
set -euo pipefail
name=${1:?usage: run_service.sh NAME [--reload] (NAME: interface llm selfie_feature profile chat1to1 shorts scenes)}
shift
# shellcheck source=scripts/prepare_local.sh
source "$(dirname "$0")/prepare_local.sh"
# shared/serve.py: the launcher every script uses, so the edge bounds (EDGE_*) are the same everywhere.
exec "$PY" -m shared.serve "$(service_module "$name")" --host 127.0.0.1 --port "$(lp "$name")" "$@"
