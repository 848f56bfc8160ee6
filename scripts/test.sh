#!/usr/bin/env bash
# The project's test command: lint, format check, then the whole pytest suite on the tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
ruff check .
ruff format --check .
python -m pytest "$@"
