#!/usr/bin/env bash
# Install the Debian packages the test harness starts: PostgreSQL and Redis servers, and what the
# real test node (tests/support/node.py) runs on: containerd with runc, the CNI plugins
# (/usr/lib/cni), iptables, ipset, conntrack, iproute2 and util-linux's nsenter/unshare; and
# Prometheus (its promtool checks the metrics the runtime and the operator expose, and the generated
# rules) and Alertmanager (amtool checks the routing infra configures); shellcheck, which actionlint
# runs on the workflows' scripts in `make lint`.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
have redis-server || missing+=(redis-server)
have containerd || missing+=(containerd)
have runc || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
have iptables || missing+=(iptables)
have ipset || missing+=(ipset)
have conntrack || missing+=(conntrack)
have ip || missing+=(iproute2)
{ have nsenter && have unshare; } || missing+=(util-linux)
{ have prometheus && have promtool; } || missing+=(prometheus)
have amtool || missing+=(prometheus-alertmanager)
have shellcheck || missing+=(shellcheck)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-system-deps: missing ${missing[*]} and not root; install them with apt-get" >&2
  exit 0  # the tests that need them are skipped with a reason (and fail in CI)
fi

echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system-wide services on the default ports; the harness runs its own.
for svc in redis-server postgresql containerd prometheus prometheus-alertmanager; do
  if command -v service >/dev/null 2>&1; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
done
