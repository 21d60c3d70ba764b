#!/usr/bin/env bash
# cache.sh: the HTTP cache, side by side in one run.
#
#  1. The same cacheable object (the Tornado example's /cached, max-age 600)
#     through nginx with proxy_cache and through the agent with --cache, and
#     through the agent without a cache (every request reaches Tornado):
#     alternating wrk rounds, rps and p99 per contender, and the ratios.
#  2. Memory: an agent with --cache 64m filled far past it (1,000 distinct
#     256 KiB objects = 250 MiB through a 64 MiB cache); its peak RSS
#     (VmHWM) against the bound 1.5 x 64 MiB + 64 MiB = 160 MiB.
#
#   bash bench/cache.sh                    # 5 rounds of 4 s per contender
#   ROUNDS=3 DURATION=3s CONNS=64 bash bench/cache.sh
#
# The agent reads its pool from --snapshot-file (no Consul needed: the pool
# is the one Tornado instance) and gets one core (GOMAXPROCS=1) like nginx's
# one worker. Everything listens on 127.0.0.1 and stops on exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-4s}"
CONNS="${CONNS:-64}"
log() { printf 'bench/cache: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

PATH="$PATH:/usr/sbin:/sbin"
for t in nginx wrk curl; do command -v "$t" >/dev/null || die "missing $t (scripts/ensure-tools.sh installs it)"; done
python="$(bash scripts/ensure-python.sh)"
agent="$root/bin/agent"
log "building bin/agent"
go build -o "$agent" ./cmd/agent

work="$(mktemp -d "${TMPDIR:-/tmp}/meshlb-cache-bench.XXXXXX")"
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
start() {
  local name="$1"; shift
  "$@" >"$work/$name.log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}
free_ports() {
  "$python" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
wait_http() {
  local i
  for ((i = 0; i < 400; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  die "$1 did not answer; logs:$(printf '\n'; tail -q -n 3 "$work"/*.log)"
}

read -r p_app p_blob p_nx p_cache p_nocache p_mem a1 a2 a3 <<<"$(free_ports 9)"

# The origin: one Tornado process (the example app), and nginx serving a
# 256 KiB blob with max-age for the memory phase.
start tornado "$python" examples/tornado/app.py --port="$p_app" --logging=warning
mkdir -p "$work/www" "$work/nginx-cache"
head -c $((256 << 10)) /dev/urandom >"$work/www/blob"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
error_log $work/nginx-error.log warn;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=c:10m max_size=64m inactive=10m use_temp_path=off;
  upstream tornado { server 127.0.0.1:$p_app; keepalive 64; }
  server {
    listen 127.0.0.1:$p_nx;
    location / {
      proxy_pass http://tornado;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache c;
      proxy_cache_lock on;
      add_header Cache-Status \$upstream_cache_status;
    }
  }
  server {
    listen 127.0.0.1:$p_blob;
    root $work/www;
    location / { expires 10m; try_files /blob =404; }
  }
}
EOF
start nginx nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;'
nginx_master=$last_pid

snapshot() { # snapshot FILE PORT
  printf '{"version":1,"saved":"2026-01-01T00:00:00Z","pools":{"app":[{"id":"app-1","service":"app","address":"127.0.0.1","port":%s,"weight":1}]}}\n' "$2" >"$1"
}
run_agent() { # run_agent NAME PORT ADMIN UPSTREAM ARGS...
  local name="$1" port="$2" admin="$3" up="$4"; shift 4
  snapshot "$work/$name.json" "$up"
  start "$name" env GOMAXPROCS=1 "$agent" --listen "127.0.0.1:$port" --service app --admin "127.0.0.1:$admin" \
    --snapshot-file "$work/$name.json" --consul-addr 127.0.0.1:1 --empty-pool-grace 1h --log-level error "$@"
}
run_agent agent-cache "$p_cache" "$a1" "$p_app" --cache 64m
cache_pid=$last_pid
run_agent agent-nocache "$p_nocache" "$a2" "$p_app"
nocache_pid=$last_pid
run_agent agent-mem "$p_mem" "$a3" "$p_blob" --cache 64m
mem_pid=$last_pid

obj="/cached?max_age=600"
for p in "$p_nx" "$p_cache" "$p_nocache"; do wait_http "http://127.0.0.1:$p$obj"; done
for p in "$p_nx" "$p_cache"; do curl -fsS -o /dev/null "http://127.0.0.1:$p$obj"; done
curl -fsS -D - -o /dev/null "http://127.0.0.1:$p_cache$obj" | grep -qi '^cache-status: meshlb; hit' || die "the agent does not hit"
curl -fsS -D - -o /dev/null "http://127.0.0.1:$p_nx$obj" | grep -qi '^cache-status: HIT' || die "nginx does not hit"

nginx_worker="$(pgrep -P "$nginx_master" | head -1)"
declare -A port=([nginx-proxy_cache]=$p_nx [meshlb-cache]=$p_cache [meshlb-uncached]=$p_nocache)
# The CPU time the proxy itself spends per request (user + system, from
# /proc): far steadier than rps on a loaded machine.
declare -A cpid=([nginx-proxy_cache]=$nginx_worker [meshlb-cache]=$cache_pid [meshlb-uncached]=$nocache_pid)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
contenders=(nginx-proxy_cache meshlb-cache meshlb-uncached)
tsv="$work/rounds.tsv"; : >"$tsv"
for ((r = 1; r <= ROUNDS; r++)); do
  for c in "${contenders[@]}"; do
    t0="$(ticks "${cpid[$c]}")"
    out="$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:${port[$c]}$obj")"
    t1="$(ticks "${cpid[$c]}")"
    rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")"
    reqs="$(awk '/requests in/ {print $1}' <<<"$out")"
    us="$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}')"
    p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
    errs="$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')"
    printf '%s\t%s\t%s\t%s\t%s\n' "$c" "$rps" "$p99" "$us" "$errs" >>"$tsv"
    log "round $r $c: $rps rps, p99 $p99, $us us CPU/request $errs"
  done
done

echo
echo "## Cached GET of one object ($ROUNDS rounds of $DURATION, $CONNS connections, wrk -t1; median rps)"
echo
echo "| contender | median rps | best rps | median p99 | median CPU us/request (the proxy's) |"
echo "|---|---:|---:|---:|---:|"
for c in "${contenders[@]}"; do
  awk -F'\t' -v c="$c" '$1 == c {print $2 "\t" $3 "\t" $4}' "$tsv" | sort -n >"$work/$c.s"
  n=$(wc -l <"$work/$c.s")
  med="$(sed -n "$(((n + 1) / 2))p" "$work/$c.s" | cut -f1)"
  best="$(tail -1 "$work/$c.s" | cut -f1)"
  p99="$(cut -f2 "$work/$c.s" | sed -n "$(((n + 1) / 2))p")"
  us="$(cut -f3 "$work/$c.s" | sort -n | sed -n "$(((n + 1) / 2))p")"
  eval "med_${c//[-_]/}=$med us_${c//[-_]/}=$us"
  echo "| $c | $med | $best | $p99 | $us |"
done
echo
awk -v a="$med_meshlbcache" -v n="$med_nginxproxycache" -v u="$med_meshlbuncached" -v ua="$us_meshlbcache" -v un="$us_nginxproxycache" 'BEGIN {
  printf "meshlb cache / nginx proxy_cache: %.2f x rps, %.2f x less CPU per request (target >= 1.0)\n", a / n, un / ua
  printf "meshlb cache / meshlb uncached (Tornado): %.1f x rps (target >= 10)\n", a / u }'

echo
echo "## Memory: --cache 64m filled with 1000 distinct 256 KiB objects (250 MiB)"
wait_http "http://127.0.0.1:$p_mem/blob?i=0"
curl -fsS -o /dev/null "http://127.0.0.1:$p_mem/blob?i=[1-1000]"
curl -fsS -o /dev/null "http://127.0.0.1:$p_mem/blob?i=[1-1000]"
hwm="$(awk '/^VmHWM/ {print $2}' "/proc/$mem_pid/status")"
rss="$(awk '/^VmRSS/ {print $2}' "/proc/$mem_pid/status")"
stored="$(curl -fsS "http://127.0.0.1:$a3/metrics" | awk '/^meshlb_cache_bytes/ {print $NF}')"
awk -v h="$hwm" -v r="$rss" -v s="$stored" 'BEGIN {
  printf "peak RSS %.1f MiB, RSS now %.1f MiB, cache holds %.1f MiB; bound 1.5 x 64 + 64 = 160 MiB: %s\n",
    h / 1024, r / 1024, s / 1048576, (h / 1024 <= 160 ? "held" : "EXCEEDED") }'
