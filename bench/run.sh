#!/usr/bin/env bash
# run.sh: meshlb's side-by-side benchmark (what `make bench` runs).
#
# In one run it alternates wrk rounds against five contenders -- direct (one
# backend, no proxy), nginx with upstream keepalive, nginx with the classic
# article's config (no upstream keepalive), HAProxy (Debian's package) and the
# meshlb agent -- over 5 fast backends (nginx `return 200`) and over 5 Tornado
# instances, then measures discovery (bench/discovery). It prints a markdown
# table and writes it, with the machine and the settings, to
# bench/results/<date>.md.
#
#   make bench                 # full run: 5 rounds of 4 s per contender (~7 min)
#   QUICK=1 make bench         # smoke run: 2 rounds of 2 s, fewer discovery trials (~3 min)
#   ROUNDS=7 DURATION=5s CONNS=64 THREADS=1 bash bench/run.sh
#   SKIP_DISCOVERY=1 / ONLY_DISCOVERY=1 / CONTENDERS="direct nginx haproxy" / SETS=fast
#   AGENT_PROCS=1              # GOMAXPROCS for the agents (default: unset, the agent's own default)
#   IDLE_CONNS=9000            # idle keep-alive connections held on each proxy for the memory table (0: skip)
#   PACED_ROUNDS=3 PACE=0.6    # latency rounds at the same offered load (0.6 x nginx's max rps)
#   PROFILE=1 bash bench/run.sh   # CPU profile of the request path (bench/profile) under wrk
#
# Everything runs on 127.0.0.1 on free ports from a temporary folder, and is
# stopped on exit. Missing tools (nginx, haproxy, wrk, curl, ss) are installed
# with apt-get.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "${QUICK:-0}" = 1 ]; then
  ROUNDS="${ROUNDS:-2}"; DURATION="${DURATION:-2s}"; TRIALS="${TRIALS:-10}"; UPDATES="${UPDATES:-3}"
fi
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-4s}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-1}"
TRIALS="${TRIALS:-30}"
UPDATES="${UPDATES:-10}"
CONTENDERS="${CONTENDERS:-direct nginx nginx-classic haproxy meshlb meshlb-1loop}"
SETS="${SETS:-fast tornado}"
# The agent runs with its defaults (an event loop per core) as "meshlb" and
# pinned to one event loop (--event-loops 1, like nginx's 1 worker and
# HAProxy's 1 thread) as "meshlb-1loop". AGENT_PROCS sets GOMAXPROCS for
# both (unset: the Go default, every core).
AGENT_PROCS="${AGENT_PROCS:-}"
IDLE_CONNS="${IDLE_CONNS:-9000}"
# Latency at the same load: PACED_ROUNDS rounds per contender at about
# PACE x nginx's maximum rps (0 rounds: skip).
PACED_ROUNDS="${PACED_ROUNDS:-3}"
PACE="${PACE:-0.6}"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---- tools ---------------------------------------------------------------
ensure_tools() {
  local need=()
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  command -v wrk >/dev/null || need+=(wrk)
  command -v curl >/dev/null || need+=(curl)
  command -v ss >/dev/null || need+=(iproute2)
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  local sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  log "installing ${need[*]}"
  # Update the package lists only when an install fails without it.
  if ! DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}
ensure_tools
PATH="$PATH:/usr/sbin:/sbin"
nginx_bin="$(command -v nginx)"
haproxy_bin="$(command -v haproxy)"
python="$(bash scripts/ensure-python.sh)"
consul="$(bash deploy/consul/install.sh)"
agent="$root/bin/agent"
need_agent=0
case " $CONTENDERS " in *" meshlb"*) need_agent=1 ;; esac
[ "${SKIP_DISCOVERY:-0}" = 1 ] || need_agent=1
[ "${PROFILE:-0}" = 1 ] && need_agent=0
if [ "$need_agent" = 1 ] && { [ ! -x "$agent" ]  || [ -n "$(find cmd discovery lb proxy tracing internal -name '*.go' -newer "$agent" 2>/dev/null | head -1)" ]; }; then
  log "building bin/agent"
  go build -o "$agent" ./cmd/agent || die "cannot build bin/agent (go build ./cmd/agent failed)"
fi

# ---- workspace and cleanup -------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/meshlb-bench.XXXXXX")"
chmod 755 "$work"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start LOGNAME CMD...: run CMD in the background, output to $work/LOGNAME.log.
start() {
  local name="$1"; shift
  "$@" >"$work/$name.log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}

# free_ports N: N distinct ports free on 127.0.0.1 right now (all held until all are chosen).
free_ports() {
  "$python" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# wait_http URL [SECONDS]: wait until URL answers 2xx.
wait_http() {
  local url="$1" secs="${2:-30}" i
  for ((i = 0; i < secs * 20; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.05
  done
  die "$url did not answer within ${secs}s; last log lines:$(printf "\n"; tail -q -n 3 "$work"/*.log 2>/dev/null)"
}

# ---- results file ----------------------------------------------------------
stamp="$(date -u +%Y-%m-%dT%H%M%SZ)"
started="$(date -u '+%Y-%m-%d %H:%M UTC')"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p bench/results
out="bench/results/$stamp.md"
tsv="$work/rounds.tsv"
: >"$tsv"

machine() {
  local cpu
  cpu="$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //')"
  echo "- date: $started"
  echo "- machine: $(nproc) cores, ${cpu:-unknown CPU}, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "- load average (1, 5, 15 min) at start: $load_start"
  echo "- nginx $("$nginx_bin" -v 2>&1 | sed 's|.*nginx/||'), HAProxy $("$haproxy_bin" -v | head -1 | awk '{print $3}'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(go version | awk '{print $3}'), Consul $("$consul" version | head -1 | awk '{print $2}'), Python $("$python" -c 'import sys,tornado; print("%d.%d.%d" % sys.version_info[:3], "/ Tornado", tornado.version)')"
  echo "- agent: bin/agent built from $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
  echo "- load: \`wrk -t$THREADS -c$CONNS -d$DURATION --latency\`, $ROUNDS rounds per contender, contenders alternated within each round (rotating start), a 1 s warm-up each before the first round"
}

# ---- backends ---------------------------------------------------------------
read -r -a fast_ports <<<"$(free_ports 5)"
read -r -a tornado_ports <<<"$(free_ports 5)"

mkdir -p "$work/backends/logs" "$work/backends/tmp"
chmod 1777 "$work/backends/tmp"
{
  echo "worker_processes 1;"
  echo "pid $work/backends/nginx.pid;"
  echo "error_log $work/backends/logs/error.log warn;"
  echo "events { worker_connections 4096; }"
  echo "http {"
  echo "  access_log off;"
  echo "  client_body_temp_path $work/backends/tmp/body; proxy_temp_path $work/backends/tmp/proxy;"
  echo "  keepalive_requests 1000000;"
  for p in "${fast_ports[@]}"; do
    echo "  server { listen 127.0.0.1:$p; location / { default_type text/plain; return 200 \"ok\"; } }"
  done
  echo "}"
} >"$work/backends/nginx.conf"
start backends-nginx "$nginx_bin" -c "$work/backends/nginx.conf" -p "$work/backends" -g 'daemon off;'

for p in "${tornado_ports[@]}"; do
  start "tornado-$p" "$python" examples/tornado/app.py --port="$p" --logging=warning
done

# ---- PROFILE=1: a CPU profile of the request path instead of the rounds --------
if [ "${PROFILE:-0}" = 1 ]; then
  for p in "${fast_ports[@]}"; do wait_http "http://127.0.0.1:$p/"; done
  go build -o "$work/profile" ./bench/profile || die "cannot build bench/profile"
  prof="bench/results/$stamp.cpu.pprof"
  "$work/profile" -backends "$(printf '127.0.0.1:%s,' "${fast_ports[@]}" | sed 's/,$//')" \
    -cpuprofile "$prof" -wrk "wrk -t$THREADS -c$CONNS -d${PROFILE_DURATION:-10s} --latency"
  go tool pprof -top -nodecount=40 "$work/profile" "$prof" 2>/dev/null | tee "bench/results/$stamp.cpu.top.txt"
  log "profile: $prof (go tool pprof -http=: $prof), top list in bench/results/$stamp.cpu.top.txt"
  exit 0
fi

# ---- Consul and registrations ------------------------------------------------
read -r c_http c_lan c_wan c_server <<<"$(free_ports 4)"
start consul "$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -node bench -log-level warn \
  -hcl "ports { http = $c_http, serf_lan = $c_lan, serf_wan = $c_wan, server = $c_server, dns = -1, grpc = -1, grpc_tls = -1 }"
export CONSUL_HTTP_ADDR="127.0.0.1:$c_http"
for ((i = 0; i < 300; i++)); do
  leader="$(curl -fsS "http://$CONSUL_HTTP_ADDR/v1/status/leader" 2>/dev/null || true)"
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  sleep 0.1
done
[ -n "${leader:-}" ] && [ "$leader" != '""' ] || die "consul dev agent on $CONSUL_HTTP_ADDR elected no leader (log: $(tail -n 5 "$work/consul.log"))"

# register NAME PORT: an instance with a TTL check marked passing at once
# (its TTL outlasts the run), as a registrar would leave it.
register() {
  local name="$1" port="$2"
  curl -fsS -X PUT "http://$CONSUL_HTTP_ADDR/v1/agent/service/register" -d @- >/dev/null <<EOF
{"ID": "$name-$port", "Name": "$name", "Address": "127.0.0.1", "Port": $port,
 "Meta": {"host": "$(hostname)"},
 "Check": {"CheckID": "$name-$port", "Name": "bench", "TTL": "1h", "Status": "passing"}}
EOF
}

# ---- contenders ---------------------------------------------------------------
read -r nx_fast nx_fast_classic nx_tornado nx_tornado_classic hp_fast hp_tornado ag_fast ag_tornado ag_fast_admin ag_tornado_admin <<<"$(free_ports 10)"
# Tracing variants of the agent (CONTENDERS="... meshlb-unsampled meshlb-sampled"):
# OTLP configured towards a port where nothing listens, so spans are made and
# dropped: the figure is the tracing work on the request path, not a collector's.
read -r agu_fast agu_tornado ags_fast ags_tornado agu_fast_admin agu_tornado_admin ags_fast_admin ags_tornado_admin otlp_void <<<"$(free_ports 9)"
read -r ag1_fast ag1_tornado ag1_fast_admin ag1_tornado_admin <<<"$(free_ports 4)"

upstream() {
  local name="$1" keepalive="$2"; shift 2
  echo "  upstream $name {"
  local p
  for p in "$@"; do echo "    server 127.0.0.1:$p;"; done
  [ "$keepalive" = 1 ] && echo "    keepalive 64;"
  echo "  }"
}
mkdir -p "$work/proxy/logs" "$work/proxy/tmp"
chmod 1777 "$work/proxy/tmp"
{
  echo "worker_processes 1;"
  echo "pid $work/proxy/nginx.pid;"
  echo "error_log $work/proxy/logs/error.log warn;"
  # Room for the idle-connection table (IDLE_CONNS clients, their upstreams).
  echo "worker_rlimit_nofile 20000;"
  echo "events { worker_connections 19000; }"
  echo "http {"
  echo "  access_log off;"
  echo "  client_body_temp_path $work/proxy/tmp/body; proxy_temp_path $work/proxy/tmp/proxy;"
  echo "  keepalive_requests 1000000;"
  upstream fast 1 "${fast_ports[@]}"
  upstream fast_classic 0 "${fast_ports[@]}"
  upstream tornado 1 "${tornado_ports[@]}"
  upstream tornado_classic 0 "${tornado_ports[@]}"
  # Upstream keepalive needs HTTP/1.1 and an empty Connection header.
  for s in "fast:$nx_fast" "tornado:$nx_tornado"; do
    echo "  server { listen 127.0.0.1:${s#*:}; location / { proxy_pass http://${s%%:*}; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  done
  # The classic article's config: proxy_pass and nothing else (HTTP/1.0, a new upstream connection per request).
  for s in "fast_classic:$nx_fast_classic" "tornado_classic:$nx_tornado_classic"; do
    echo "  server { listen 127.0.0.1:${s#*:}; location / { proxy_pass http://${s%%:*}; } }"
  done
  echo "}"
} >"$work/proxy/nginx.conf"

{
  echo "global"
  echo "  nbthread 1"
  echo "  maxconn 9600"
  echo "defaults"
  echo "  mode http"
  echo "  timeout connect 1s"
  echo "  timeout client 30s"
  echo "  timeout server 30s"
  for s in "fast:$hp_fast" "tornado:$hp_tornado"; do
    echo "frontend ${s%%:*}"
    echo "  bind 127.0.0.1:${s#*:}"
    echo "  default_backend ${s%%:*}_servers"
    echo "backend ${s%%:*}_servers"
    echo "  balance roundrobin"
    if [ "${s%%:*}" = fast ]; then set -- "${fast_ports[@]}"; else set -- "${tornado_ports[@]}"; fi
    for p in "$@"; do echo "  server s$p 127.0.0.1:$p"; done
  done
} >"$work/haproxy.cfg"

# url SET CONTENDER: where wrk points.
url() {
  local port
  case "$1:$2" in
    fast:direct) port="${fast_ports[0]}" ;;
    tornado:direct) port="${tornado_ports[0]}" ;;
    fast:nginx) port="$nx_fast" ;;
    tornado:nginx) port="$nx_tornado" ;;
    fast:nginx-classic) port="$nx_fast_classic" ;;
    tornado:nginx-classic) port="$nx_tornado_classic" ;;
    fast:haproxy) port="$hp_fast" ;;
    tornado:haproxy) port="$hp_tornado" ;;
    fast:meshlb) port="$ag_fast" ;;
    tornado:meshlb) port="$ag_tornado" ;;
    fast:meshlb-unsampled) port="$agu_fast" ;;
    tornado:meshlb-unsampled) port="$agu_tornado" ;;
    fast:meshlb-sampled) port="$ags_fast" ;;
    fast:meshlb-1loop) port="$ag1_fast" ;;
    tornado:meshlb-1loop) port="$ag1_tornado" ;;
    tornado:meshlb-sampled) port="$ags_tornado" ;;
    *) die "unknown contender $2 for $1" ;;
  esac
  echo "http://127.0.0.1:$port/"
}

# ---- discovery only -----------------------------------------------------------
run_discovery() {
  log "discovery figures (bench/discovery, trials=$TRIALS updates=$UPDATES)"
  go build -o "$work/discovery" ./bench/discovery || die "cannot build bench/discovery"
  "$work/discovery" -agent "$agent" -consul "$consul" -trials "$TRIALS" -updates "$UPDATES" -work "$work/discovery.d"
}

if [ "${ONLY_DISCOVERY:-0}" = 1 ]; then
  { echo "# meshlb discovery figures, $stamp"; echo; machine; echo; run_discovery; } | tee "$out"
  log "written to $out"
  exit 0
fi

# ---- start everything ------------------------------------------------------------
for p in "${fast_ports[@]}"; do register bench-fast "$p"; done
for p in "${tornado_ports[@]}"; do register bench-tornado "$p"; done

start proxy-nginx "$nginx_bin" -c "$work/proxy/nginx.conf" -p "$work/proxy" -g 'daemon off;'
start haproxy "$haproxy_bin" -f "$work/haproxy.cfg" -db
agent_pids=()
agent_env=(env)
[ -z "$AGENT_PROCS" ] || agent_env+=(GOMAXPROCS="$AGENT_PROCS")
declare -A pid_of # CONTENDER:SET -> the process whose memory and CPU count
case " $CONTENDERS " in *" meshlb "*)
  for set in $SETS; do
    eval "port=\$ag_$set admin=\$ag_${set}_admin"
    start "agent-$set" "${agent_env[@]}" "$agent" --listen "127.0.0.1:$port" --service "bench-$set" --admin "127.0.0.1:$admin" --log-level warn
    agent_pids+=("$set:$last_pid")
    pid_of["meshlb:$set"]=$last_pid
  done
esac
case " $CONTENDERS " in *" meshlb-1loop "*)
  for set in $SETS; do
    eval "port=\$ag1_$set admin=\$ag1_${set}_admin"
    start "agent-1loop-$set" "${agent_env[@]}" "$agent" --event-loops 1 --listen "127.0.0.1:$port" --service "bench-$set" --admin "127.0.0.1:$admin" --log-level warn
    agent_pids+=("$set, one loop:$last_pid")
    pid_of["meshlb-1loop:$set"]=$last_pid
  done
esac
for variant in unsampled sampled; do
  case " $CONTENDERS " in *" meshlb-$variant "*) ;; *) continue ;; esac
  sampler=always_off; [ "$variant" = sampled ] && sampler=always_on
  for set in $SETS; do
    short=u; [ "$variant" = sampled ] && short=s
    eval "port=\$ag${short}_$set admin=\$ag${short}_${set}_admin"
    start "agent-$variant-$set" "${agent_env[@]}" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_void" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
      OTEL_TRACES_SAMPLER="$sampler" "$agent" --listen "127.0.0.1:$port" --service "bench-$set" --admin "127.0.0.1:$admin" --log-level error
    pid_of["meshlb-$variant:$set"]=$last_pid
  done
done

for set in $SETS; do
  for c in $CONTENDERS; do wait_http "$(url "$set" "$c")"; done
done
# The agents answer once their pool is complete: five distinct Tornado PIDs through it.
for c in meshlb meshlb-1loop nginx haproxy; do
  case " $CONTENDERS " in *" $c "*) ;; *) continue ;; esac
  case " $SETS " in *" tornado "*) ;; *) continue ;; esac
  for ((i = 0; i < 100; i++)); do
    n="$(for _ in 1 2 3 4 5 6 7 8 9 10; do curl -fsS "$(url tornado "$c")"; echo; done | sort -u | wc -l)"
    [ "$n" -ge 5 ] && break
    sleep 0.1
  done
  [ "$n" -ge 5 ] || die "$c spreads over $n Tornado instances, want 5"
done

# bench_one SET CONTENDER ROUND DURATION: one wrk run; a line in the TSV unless ROUND is "warm".
bench_one() {
  local set="$1" c="$2" round="$3" dur="$4" o
  o="$(wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency "$(url "$set" "$c")" 2>&1)" || die "wrk failed against $c ($set): $o"
  [ "$round" = warm ] && return 0
  parse_wrk "$set" "$c" "$round" <<<"$o"
}

# parse_wrk SET CONTENDER ROUND < wrk output: appends a line to $tsv.
parse_wrk() {
  local set="$1" c="$2" round="$3"
  awk -v set="$set" -v c="$c" -v round="$round" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    END { printf "%s\t%s\t%s\t%.1f\t%.3f\t%.3f\t%d\n", set, c, round, rps, p50, p99, err }
  ' >>"$tsv"
  log "$(tail -n 1 "$tsv" | awk -F'\t' '{printf "%-8s %-14s round %s: %8.0f rps  p50 %.2f ms  p99 %.2f ms  errors %d", $1, $2, $3, $4, $5, $6, $7}')"
}

# Paced rounds: the same offered load for every contender, so that their
# latencies compare "at the same load". Each connection waits DELAY ms
# after every answer (wrk's delay() hook), DELAY chosen so that the load is
# about PACE x nginx's median rps on that set (its maximum, measured above).
cat >"$work/pace.lua" <<'LUA'
local d = tonumber(os.getenv("WRK_DELAY_MS"))
function delay() return d end
LUA
paced_tsv="$work/paced.tsv"
: >"$paced_tsv"
pace_one() {
  local set="$1" c="$2" round="$3" dur="$4" o
  o="$(WRK_DELAY_MS="$delay_ms" wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency -s "$work/pace.lua" "$(url "$set" "$c")" 2>&1)" || die "paced wrk failed against $c ($set): $o"
  tsv="$paced_tsv" parse_wrk "$set" "$c" "$round" <<<"$o"
}

read -r -a cs <<<"$CONTENDERS"
for set in $SETS; do
  log "warm-up ($set)"
  for c in "${cs[@]}"; do bench_one "$set" "$c" warm 1s; done
  for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < ${#cs[@]}; k++)); do
      bench_one "$set" "${cs[$(((k + r - 1) % ${#cs[@]}))]}" "$r" "$DURATION"
    done
  done
  nginx_rps="$(awk -F'\t' -v set="$set" '$1 == set && $2 == "nginx" {print $4}' "$tsv" | sort -n | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}')"
  if [ -n "$nginx_rps" ] && [ "$PACED_ROUNDS" -gt 0 ]; then
    delay_ms="$(awk -v c="$CONNS" -v r="$nginx_rps" -v p="$PACE" 'BEGIN {d = int(c * 1000 / (p * r) + 0.5); print (d < 1 ? 1 : d)}')"
    log "paced rounds ($set): each connection waits $delay_ms ms after every answer (about $PACE x nginx's $nginx_rps rps)"
    for ((r = 1; r <= PACED_ROUNDS; r++)); do
      for ((k = 0; k < ${#cs[@]}; k++)); do
        pace_one "$set" "${cs[$(((k + r - 1) % ${#cs[@]}))]}" "$r" "$DURATION"
      done
    done
  fi
done
echo "- load average after the rounds: $(cut -d' ' -f1-3 /proc/loadavg) (this run's own wrk, proxies and backends count in it)" >"$work/loadavg"
agent_rss="$(for a in "${agent_pids[@]}"; do
  echo "$(awk '/VmHWM/ {print $2}' "/proc/${a##*:}/status") ${a%:*}"
done)"

# ---- CPU per request, idle connections, allocations ---------------------------
nginx_worker="$(pgrep -P "$(cat "$work/proxy/nginx.pid")" | head -1)"
haproxy_pid="$(pgrep -f "haproxy -f $work/haproxy.cfg" | head -1)"
pid_for() { # CONTENDER SET
  case "$1" in
    nginx) echo "$nginx_worker" ;;
    haproxy) echo "$haproxy_pid" ;;
    meshlb*) echo "${pid_of[$1:$2]:-}" ;;
  esac
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
extra="$work/extra.md"
: >"$extra"
cpu_rows=()
for c in nginx haproxy meshlb meshlb-1loop meshlb-unsampled; do
  case " $CONTENDERS " in *" $c "*) ;; *) continue ;; esac
  for set in $SETS; do
    pid="$(pid_for "$c" "$set")"
    [ -n "$pid" ] || continue
    t0="$(ticks "$pid")"
    o="$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$(url "$set" "$c")" 2>&1)" || die "wrk failed against $c ($set): $o"
    t1="$(ticks "$pid")"
    reqs="$(awk '/requests in/ {print $1}' <<<"$o")"
    cpu_rows+=("$(awk -v s="$set" -v c="$c" -v t="$((t1 - t0))" -v hz="$hz" -v n="$reqs" 'BEGIN {printf "| %s | %s | %d | %.1f | %.1f |", s, c, n, t / hz, t / hz * 1e6 / n}')")
    log "cpu per request: $c ($set): ${cpu_rows[-1]}"
  done
done
if [ ${#cpu_rows[@]} -gt 0 ]; then
  {
    echo "CPU per request (the proxy process's user + system time over one \`wrk -t$THREADS -c$CONNS -d$DURATION\` run, nginx: its worker):"
    echo
    echo "| backends | contender | requests | CPU s | CPU µs per request |"
    echo "|---|---|---:|---:|---:|"
    printf '%s\n' "${cpu_rows[@]}"
    echo
  } >>"$extra"
fi
if [ "$IDLE_CONNS" -gt 0 ]; then
  go build -o "$work/idleconns" ./bench/idleconns || die "cannot build bench/idleconns"
  idle_rows=()
  for c in nginx haproxy meshlb meshlb-1loop; do
    case " $CONTENDERS " in *" $c "*) ;; *) continue ;; esac
    set="${SETS%% *}"
    pid="$(pid_for "$c" "$set")"
    [ -n "$pid" ] || continue
    o="$("$work/idleconns" -url "$(url "$set" "$c")" -pid "$pid" -n "$IDLE_CONNS")" || die "idleconns failed against $c: $o"
    idle_rows+=("$(awk -F'\t' -v c="$c" '{printf "| %s | %d | %d | %d | %.2f | %.1f |", c, $1, $2, $3, $4, $4 * 1e6 / 1048576}' <<<"$o")")
    log "idle connections: ${idle_rows[-1]}"
  done
  {
    echo "Memory per idle keep-alive client connection (RSS of the proxy process before and after $IDLE_CONNS clients each made one GET and stayed connected, idle; nginx: its worker):"
    echo
    echo "| contender | connections | RSS before KiB | RSS after KiB | KiB per connection | GiB at 1,000,000 |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${idle_rows[@]}"
    echo
  } >>"$extra"
fi
allocs="$(cd proxy && go test -run XXX -bench 'BenchmarkProxy/^loop(-|$)' -benchmem -benchtime 20000x . 2>/dev/null | awk '/BenchmarkProxy\/loop/ {sub(/^BenchmarkProxy\//, "", $1); sub(/-[0-9]+$/, "", $1); printf "%s%s %s", sep, $1, $(NF-1); sep = ", "}')"
if [ -n "$allocs" ]; then
  echo "Allocations per proxied GET (\`go test -bench 'BenchmarkProxy/^loop(-|\$)' -benchmem ./proxy/\`, tracing and access log off; loop: through the handler on a goroutine, loop-exchange: on the loop as the agent serves GETs, -recorder: with a recent-requests recorder as the agent's default): $allocs allocs/op" >>"$extra"
  echo >>"$extra"
fi

{
  echo "# meshlb benchmark, $stamp"
  echo
  machine
  cat "$work/loadavg"
  echo "- backends: 5 fast ones (one nginx, 1 worker, 5 \`return 200 \"ok\"\` servers) and 5 Tornado processes (\`examples/tornado/app.py\`); nginx 1 worker, HAProxy nbthread 1, the agent with its defaults (\`meshlb\`: an event loop per core) and with \`--event-loops 1\` (\`meshlb-1loop\`), GOMAXPROCS ${AGENT_PROCS:-unset}; all on one machine, so every proxy competes with wrk and the backends for the same cores"
  [ -z "$agent_rss" ] || while read -r kb n; do echo "- agent peak RSS during the $n rounds: $((kb / 1024)) MiB"; done <<<"$agent_rss"
  echo
  "$python" bench/table.py "$tsv" "$paced_tsv"
  echo
  cat "$extra"
  if [ "${SKIP_DISCOVERY:-0}" != 1 ]; then
    echo
    run_discovery
  fi
} | tee "$out"
cp "$tsv" "bench/results/$stamp.tsv"
cp "$paced_tsv" "bench/results/$stamp.paced.tsv"
log "table written to $out (raw rounds: bench/results/$stamp.tsv)"
