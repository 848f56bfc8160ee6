# shellcheck shell=bash
# Shared first steps of run_local.sh and run_service.sh: venv, tiny models, local secrets, client config.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=scripts/lib/services.sh
source "$REPO/scripts/lib/services.sh"
bash "$REPO/scripts/setup_env.sh"
PY="$REPO/.venv/bin/python"
STATE=${IMG_POD_STATE:-$REPO/.local}
MODELS="$STATE/models"
PORT_OFFSET=${IMG_POD_PORT_OFFSET:-0}
mkdir -p "$STATE/logs" "$STATE/ultralytics"
"$PY" -m shared.tiny_models --out "$MODELS" >/dev/null
[ -s "$STATE/internal_token" ] || "$PY" -c "import secrets; print(secrets.token_urlsafe(24))" >"$STATE/internal_token"
[ -s "$STATE/api_key" ] || "$PY" -c "import secrets; print(secrets.token_urlsafe(24))" >"$STATE/api_key"
# shellcheck source=scripts/local_env.sh
source "$REPO/scripts/local_env.sh"
cat >"$STATE/config.json" <<JSON
{"interface_base_url": "$(url interface)", "api_key": "$api_key"}
JSON
export REPO PY STATE MODELS PORT_OFFSET
