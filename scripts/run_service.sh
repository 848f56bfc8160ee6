#!/usr/bin/env bash
# One service in the foreground for local development, with the local stack's tiny-model environment.
#   bash scripts/run_service.sh NAME [--reload]
set -euo pipefail
name=${1:?usage: run_service.sh NAME [--reload] (NAME: interface llm selfie_feature profile chat1to1 shorts scenes)}
shift
# shellcheck source=scripts/prepare_local.sh
source "$(dirname "$0")/prepare_local.sh"
exec "$PY" -m uvicorn --factory "$(service_module "$name"):create_app" --host 127.0.0.1 --port "$(lp "$name")" \
  --loop uvloop --http httptools "$@"
