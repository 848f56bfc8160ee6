#!/usr/bin/env bash
# dnsmasq for the tests that find workers by DNS (tests/integration/test_dns_pools.py): each test starts its
# own server on a loopback port. Idempotent: nothing to do when dnsmasq is on PATH (or in /usr/sbin).
set -euo pipefail

if command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing dnsmasq (Debian package)" >&2
# dnsmasq-base: the binary without the package's system service, which would try to take port 53 at
# install (no init in CI containers anyway): the tests start their own server.
$SUDO apt-get install -y --no-install-recommends dnsmasq-base >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y --no-install-recommends dnsmasq-base >/dev/null; }
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]
