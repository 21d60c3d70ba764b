#!/usr/bin/env bash
# demo.sh: the classic example with discovery instead of a static list.
# A Consul dev agent, five Tornado processes each under a registrar, and the
# meshlb agent in front. Ctrl-C stops everything it started.
#
# Ports (all overridable): PORT=8070 (the agent), app ports PORT+1..PORT+N
# (N=INSTANCES, 5), ADMIN_PORT=9070, CONSUL_PORT=8500.
# `sudo PORT=70 make demo` reproduces the article's ports 70-75.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PORT="${PORT:-8070}"
INSTANCES="${INSTANCES:-5}"
ADMIN_PORT="${ADMIN_PORT:-9070}"
CONSUL_PORT="${CONSUL_PORT:-8500}"
SERVICE="${SERVICE:-hello}"
DRAIN="${DRAIN:-1s}"

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for v in PORT INSTANCES ADMIN_PORT CONSUL_PORT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v} is not a number"
done
(( PORT >= 1 && PORT + INSTANCES <= 65535 )) || die "PORT=$PORT with INSTANCES=$INSTANCES leaves the 1-65535 range"

consul="$(bash deploy/consul/install.sh)"
python="$(bash scripts/ensure-python.sh)"
BIN_DIR="${BIN_DIR:-$root/bin}"
[ -x "$BIN_DIR/agent" ] && [ -x "$BIN_DIR/registrar" ] || die "$BIN_DIR/agent and $BIN_DIR/registrar are missing: run 'make build' (make demo does)"

app_ports=()
for i in $(seq 1 "$INSTANCES"); do app_ports+=($((PORT + i))); done
# Consul's dev agent also opens its serf and server ports; pick free ones.
serf_lan=$((CONSUL_PORT + 1001)); serf_wan=$((CONSUL_PORT + 1002)); server_port=$((CONSUL_PORT + 1000))

taken=()
for p in "$PORT" "${app_ports[@]}" "$ADMIN_PORT" "$CONSUL_PORT" "$serf_lan" "$serf_wan" "$server_port"; do
  if ss -Hltn "sport = :$p" | grep -q .; then taken+=("$p"); fi
done
if [ ${#taken[@]} -gt 0 ]; then
  die "port(s) ${taken[*]} already in use; stop what listens there ('ss -ltnp') or choose others: PORT=9080 ADMIN_PORT=9090 CONSUL_PORT=9500 make demo"
fi

state="$(mktemp -d "${TMPDIR:-/tmp}/meshlb-demo.XXXXXX")"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  say "stopping: registrars drain and stop their apps, then the agent and Consul"
  # Registrars first (they deregister), then the agent, then Consul.
  for pid in "${reg_pids[@]:-}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${reg_pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  [ -n "${agent_pid:-}" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  [ -n "${consul_pid:-}" ] && kill -TERM "$consul_pid" 2>/dev/null && wait "$consul_pid" 2>/dev/null || true
  rm -rf "$state"
  say "stopped; logs were in $state (removed)"
}
trap cleanup INT TERM EXIT

say "starting Consul dev agent on 127.0.0.1:$CONSUL_PORT (state in $state)"
"$consul" agent -dev -config-file deploy/consul/dev.hcl -data-dir "$state/consul" -node demo \
  -hcl "ports { http = $CONSUL_PORT, serf_lan = $serf_lan, serf_wan = $serf_wan, server = $server_port }" \
  >"$state/consul.log" 2>&1 &
consul_pid=$!
export CONSUL_HTTP_ADDR="127.0.0.1:$CONSUL_PORT"
for _ in $(seq 1 150); do
  leader="$(curl -fsS "http://$CONSUL_HTTP_ADDR/v1/status/leader" 2>/dev/null || true)"
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  kill -0 "$consul_pid" 2>/dev/null || { cat "$state/consul.log" >&2; die "Consul exited"; }
  sleep 0.2
done

reg_pids=()
for p in "${app_ports[@]}"; do
  "$BIN_DIR/registrar" --service "$SERVICE" --port "$p" --drain "$DRAIN" --log-level warn -- \
    "$python" examples/tornado/app.py --port="$p" --logging=warning >"$state/app-$p.log" 2>&1 &
  reg_pids+=($!)
done
say "started $INSTANCES Tornado instances under registrars on ports ${app_ports[*]}"

"$BIN_DIR/agent" --listen ":$PORT" --service "$SERVICE" --admin "127.0.0.1:$ADMIN_PORT" \
  --snapshot-file "$state/pools.json" >"$state/agent.log" 2>&1 &
agent_pid=$!

# Ready when the agent has served every instance.
deadline=$((SECONDS + 30))
while :; do
  pids_seen="$(for _ in $(seq 1 "$((INSTANCES * 2))"); do curl -fsS "http://127.0.0.1:$PORT/" 2>/dev/null; echo; done | sort -u | grep -c 'Process Id' || true)"
  [ "$pids_seen" -ge "$INSTANCES" ] && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$state/agent.log" >&2; die "the agent exited"; }
  (( SECONDS < deadline )) || { tail -20 "$state/agent.log" >&2; die "not all $INSTANCES instances served after 30s"; }
  sleep 0.3
done

next=$((PORT + INSTANCES + 1))
cat <<MSG

  meshlb demo is ready: http://127.0.0.1:$PORT/ balances over $INSTANCES Tornado processes.

  Round robin, one PID after another:
    for i in \$(seq 10); do curl -s 127.0.0.1:$PORT/; echo; done

  Add a sixth instance from another terminal; it joins within a second:
    CONSUL_HTTP_ADDR=$CONSUL_HTTP_ADDR $BIN_DIR/registrar --service $SERVICE --port $next -- $python $root/examples/tornado/app.py --port=$next

  Kill one; it leaves the pool and no request fails:
    kill -9 \$(curl -s 127.0.0.1:$((PORT + 1))/ | awk '{print \$NF}')

  Look inside: curl -s 127.0.0.1:$ADMIN_PORT/metrics | grep meshlb_instance    Consul UI: http://$CONSUL_HTTP_ADDR/ui
  Trace a request: see "Trace a request" in README.md (set OTEL_EXPORTER_OTLP_ENDPOINT before make demo).

  Ctrl-C stops everything.
MSG
wait "$agent_pid"
