#!/usr/bin/env bash
# demo.sh: the classic example with discovery instead of a static list.
# A Consul dev agent, five Tornado processes each under a registrar, and the
# meshlb agent in front. Ctrl-C stops everything it started.
#
# Ports (all overridable): PORT=8070 (the agent), app ports PORT+1..PORT+N
# (N=INSTANCES, 5), ADMIN_PORT=9070, CONSUL_PORT=8500.
# `sudo PORT=70 make demo` reproduces the article's ports 70-75.
#
# TRACE=1 (`make demo TRACE=1`) adds a trace backend: Jaeger all-in-one
# (deploy/jaeger/install.sh builds it the first time) receiving OTLP/gRPC on
# OTLP_PORT=4317, its query API on JAEGER_PORT=16686 (and its gRPC query
# port on JAEGER_PORT-1); the registrars run in mesh mode on MESH_PORT+1..
# MESH_PORT+N (MESH_PORT=PORT+10) and, like the agent, export spans to it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PORT="${PORT:-8070}"
INSTANCES="${INSTANCES:-5}"
ADMIN_PORT="${ADMIN_PORT:-9070}"
CONSUL_PORT="${CONSUL_PORT:-8500}"
SERVICE="${SERVICE:-hello}"
DRAIN="${DRAIN:-1s}"
TRACE="${TRACE:-0}"
OTLP_PORT="${OTLP_PORT:-4317}"
JAEGER_PORT="${JAEGER_PORT:-16686}"
MESH_PORT="${MESH_PORT:-$((PORT + 10))}"

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[[ "$TRACE" =~ ^[01]$ ]] || die "TRACE=$TRACE: want 1 (start a trace backend) or 0"
for v in PORT INSTANCES ADMIN_PORT CONSUL_PORT OTLP_PORT JAEGER_PORT MESH_PORT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v} is not a number"
done
(( PORT >= 1 && PORT + INSTANCES <= 65535 )) || die "PORT=$PORT with INSTANCES=$INSTANCES leaves the 1-65535 range"
(( MESH_PORT >= 1 && MESH_PORT + INSTANCES <= 65535 )) || die "MESH_PORT=$MESH_PORT with INSTANCES=$INSTANCES leaves the 1-65535 range"
(( JAEGER_PORT >= 2 && JAEGER_PORT <= 65535 && OTLP_PORT >= 1 && OTLP_PORT <= 65535 )) || die "JAEGER_PORT=$JAEGER_PORT or OTLP_PORT=$OTLP_PORT is out of range"

consul="$(bash deploy/consul/install.sh)"
python="$(bash scripts/ensure-python.sh)"
jaeger=""
if [ "$TRACE" = 1 ]; then
  jaeger="$(bash deploy/jaeger/install.sh)"
fi
BIN_DIR="${BIN_DIR:-$root/bin}"
[ -x "$BIN_DIR/agent" ] && [ -x "$BIN_DIR/registrar" ] || die "$BIN_DIR/agent and $BIN_DIR/registrar are missing: run 'make build' (make demo does)"

app_ports=()
for i in $(seq 1 "$INSTANCES"); do app_ports+=($((PORT + i))); done
trace_ports=()
if [ "$TRACE" = 1 ]; then
  for i in $(seq 1 "$INSTANCES"); do trace_ports+=($((MESH_PORT + i))); done
  trace_ports+=("$OTLP_PORT" "$JAEGER_PORT" $((JAEGER_PORT - 1)))
fi
# Consul's dev agent also opens its serf and server ports; pick free ones.
serf_lan=$((CONSUL_PORT + 1001)); serf_wan=$((CONSUL_PORT + 1002)); server_port=$((CONSUL_PORT + 1000))

taken=()
for p in "$PORT" "${app_ports[@]}" "$ADMIN_PORT" "$CONSUL_PORT" "$serf_lan" "$serf_wan" "$server_port" "${trace_ports[@]}"; do
  if ss -Hltn "sport = :$p" | grep -q .; then taken+=("$p"); fi
done
if [ ${#taken[@]} -gt 0 ]; then
  die "port(s) ${taken[*]} already in use; stop what listens there ('ss -ltnp') or choose others: PORT=9080 ADMIN_PORT=9090 CONSUL_PORT=9500 OTLP_PORT=5317 JAEGER_PORT=17686 make demo"
fi

state="$(mktemp -d "${TMPDIR:-/tmp}/meshlb-demo.XXXXXX")"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  say "stopping: registrars drain and stop their apps, then the agent and Consul${jaeger_pid:+, then Jaeger}"
  # Registrars first (they deregister), then the agent, then Consul.
  for pid in "${reg_pids[@]:-}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${reg_pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  [ -n "${agent_pid:-}" ] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  [ -n "${consul_pid:-}" ] && kill -TERM "$consul_pid" 2>/dev/null && wait "$consul_pid" 2>/dev/null || true
  [ -n "${jaeger_pid:-}" ] && kill -TERM "$jaeger_pid" 2>/dev/null && wait "$jaeger_watch" 2>/dev/null || true
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

# The trace backend: Jaeger's all-in-one, in memory, on loopback only.
trace_ui=""
if [ "$TRACE" = 1 ]; then
  cat >"$state/jaeger.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      demo_store:
        memory:
          max_traces: 10000
  jaeger_query:
    enable_tracing: false
    storage:
      traces: demo_store
    http:
      endpoint: 127.0.0.1:$JAEGER_PORT
    grpc:
      endpoint: 127.0.0.1:$((JAEGER_PORT - 1))
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTLP_PORT
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: demo_store
YAML
  say "starting Jaeger (OTLP/gRPC on 127.0.0.1:$OTLP_PORT, query API and UI on 127.0.0.1:$JAEGER_PORT)"
  # Jaeger runs in a session of its own, so that Ctrl-C (SIGINT to the
  # terminal's process group) does not stop it before the agent and the
  # registrars have flushed their last spans to it: cleanup stops it last.
  # The watcher beside it stops it as well if this script dies uncleanly.
  setsid bash -c '"$1" --config "$2" >"$3" 2>&1 &
    j=$!; echo "$j" >"$4"
    while kill -0 "$5" 2>/dev/null && kill -0 "$j" 2>/dev/null; do sleep 0.5; done
    kill -TERM "$j" 2>/dev/null; wait "$j"' jaeger-watch \
    "$jaeger" "$state/jaeger.yaml" "$state/jaeger.log" "$state/jaeger.pid" "$$" </dev/null >/dev/null 2>&1 &
  jaeger_watch=$!
  for _ in $(seq 1 50); do [ -s "$state/jaeger.pid" ] && break; sleep 0.1; done
  jaeger_pid="$(cat "$state/jaeger.pid" 2>/dev/null || true)"
  [ -n "$jaeger_pid" ] || die "Jaeger did not start"
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$JAEGER_PORT/api/services" >/dev/null 2>&1 && ss -Hltn "sport = :$OTLP_PORT" | grep -q . && break
    kill -0 "$jaeger_pid" 2>/dev/null || { cat "$state/jaeger.log" >&2; die "Jaeger exited"; }
    sleep 0.2
  done
  # A Jaeger built from the Go module has no web UI assets (its page says
  # so): link the status page to the trace's JSON in the query API then.
  if curl -fsS "http://127.0.0.1:$JAEGER_PORT/" 2>/dev/null | grep -q "not the Jaeger UI"; then
    trace_ui="http://127.0.0.1:$JAEGER_PORT/api/traces/{trace_id}"
  else
    trace_ui="http://127.0.0.1:$JAEGER_PORT"
  fi
  export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=grpc
  export OTEL_BSP_SCHEDULE_DELAY="${OTEL_BSP_SCHEDULE_DELAY:-500}"
fi

reg_pids=()
for p in "${app_ports[@]}"; do
  mesh=()
  [ "$TRACE" = 1 ] && mesh=(--mesh-port $((MESH_PORT + p - PORT)))
  "$BIN_DIR/registrar" --service "$SERVICE" --port "$p" "${mesh[@]}" --drain "$DRAIN" --log-level warn -- \
    "$python" examples/tornado/app.py --port="$p" --logging=warning >"$state/app-$p.log" 2>&1 &
  reg_pids+=($!)
done
say "started $INSTANCES Tornado instances under registrars on ports ${app_ports[*]}"

trace_args=()
[ -n "$trace_ui" ] && trace_args=(--trace-ui "$trace_ui")
"$BIN_DIR/agent" --listen ":$PORT" --service "$SERVICE" --admin "127.0.0.1:$ADMIN_PORT" \
  --snapshot-file "$state/pools.json" "${trace_args[@]}" >"$state/agent.log" 2>&1 &
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
mesh_next=""
[ "$TRACE" = 1 ] && mesh_next=" --mesh-port $((MESH_PORT + INSTANCES + 1))"

# One request to show how to find the process that served it.
sample="$(curl -sS -D "$state/sample.head" "http://127.0.0.1:$PORT/" 2>/dev/null || true)"
sample_pid="$(printf '%s' "$sample" | awk '{print $NF}')"
sample_trace="$(tr -d '\r' <"$state/sample.head" | sed -n 's/^[Tt]raceresponse: 00-\([0-9a-f]\{32\}\)-.*/\1/p')"
if [ "$TRACE" = 1 ] && [[ "$trace_ui" == *"{trace_id}"* ]]; then
  trace_how="  Its trace in Jaeger (agent -> registrar sidecar -> the app's process.pid), a second after the request:
    curl -s 127.0.0.1:$JAEGER_PORT/api/traces/$sample_trace    (JSON: this Jaeger build has no web UI)"
elif [ "$TRACE" = 1 ]; then
  trace_how="  Its trace in Jaeger's UI (agent -> registrar sidecar -> the app's process.pid): $trace_ui/trace/$sample_trace"
else
  trace_how="  For spans across the agent and the instances: make demo TRACE=1 (starts Jaeger beside Consul)."
fi
cat <<MSG

  meshlb demo is ready: http://127.0.0.1:$PORT/ balances over $INSTANCES Tornado processes.

  Round robin, one PID after another:
    for i in \$(seq 10); do curl -s 127.0.0.1:$PORT/; echo; done

  Add a sixth instance from another terminal; it joins within a second:
    CONSUL_HTTP_ADDR=$CONSUL_HTTP_ADDR $BIN_DIR/registrar --service $SERVICE --port $next$mesh_next -- $python $root/examples/tornado/app.py --port=$next

  Kill one; it leaves the pool and no request fails:
    kill -9 \$(curl -s 127.0.0.1:$((PORT + 1))/ | awk '{print \$NF}')

  Which process served a request: the demo sent one just now (trace $sample_trace, answered by PID $sample_pid):
    $BIN_DIR/agent requests --admin 127.0.0.1:$ADMIN_PORT --trace-id $sample_trace
$trace_how

  Look inside:
    status page, live: http://127.0.0.1:$ADMIN_PORT/   (pools, recent requests with PIDs and trace ids)
    $BIN_DIR/agent status --admin 127.0.0.1:$ADMIN_PORT     the pool: instances, PIDs, in flight, errors
    $BIN_DIR/agent requests --admin 127.0.0.1:$ADMIN_PORT   recent requests (--failed, --slow 200ms, --json)
    curl -s 127.0.0.1:$ADMIN_PORT/metrics | grep meshlb_instance    Consul UI: http://$CONSUL_HTTP_ADDR/ui

  Ctrl-C stops everything.
MSG
wait "$agent_pid"
