#!/usr/bin/env bash
# Deploy the interface service on this pod (see scripts/deploy_service.sh for the environment it reads).
set -euo pipefail
exec bash "$(dirname "$0")/scripts/deploy_service.sh" interface "$@"
