#!/usr/bin/env bash
# redis-server for the tests that share rate limit counts between interface replicas
# (tests/integration/test_rate_limits.py). Idempotent: nothing to do when redis-server is on PATH.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing redis-server (Debian package)" >&2
# The package's own service is not started (no init in CI containers): the tests start their own server.
$SUDO apt-get install -y --no-install-recommends redis-server >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y --no-install-recommends redis-server >/dev/null; }
command -v redis-server >/dev/null
