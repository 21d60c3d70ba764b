#!/usr/bin/env bash
# dev-agent.sh: start a Consul dev agent (in-memory state, a leader of its
# own) and wait until it has elected itself. Prints its HTTP address and
# keeps running in the foreground until Ctrl-C.
#   CONSUL_PORT=8500 deploy/consul/dev-agent.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
consul="$(bash "$here/install.sh")"
port="${CONSUL_PORT:-8500}"
data="$(mktemp -d "${TMPDIR:-/tmp}/meshlb-consul.XXXXXX")"
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT INT TERM
"$consul" agent -dev -config-file "$here/dev.hcl" -data-dir "$data" \
  -hcl "ports { http = $port }" &
pid=$!
for _ in $(seq 1 150); do
  leader="$(curl -fsS "http://127.0.0.1:$port/v1/status/leader" 2>/dev/null || true)"
  if [ -n "$leader" ] && [ "$leader" != '""' ]; then
    echo "consul dev agent ready: CONSUL_HTTP_ADDR=127.0.0.1:$port (leader $leader)"
    wait "$pid"
    exit $?
  fi
  kill -0 "$pid" 2>/dev/null || { echo "consul exited before electing a leader" >&2; exit 1; }
  sleep 0.2
done
echo "consul: no leader after 30s" >&2
exit 1
