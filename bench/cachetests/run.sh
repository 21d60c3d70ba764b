#!/usr/bin/env bash
# run.sh: the public HTTP cache test suite (npm http-cache-tests, the suite
# behind cache-tests.fyi) through the agent with --cache and, in the same
# run, through nginx with proxy_cache, both in front of the suite's own
# server. Prints the pass counts (score.mjs: passes and "yes" checks,
# dependencies honoured, as cache-tests.fyi shows them) and keeps the JSON
# results and the failing tests in bench/results/.
#
#   bash bench/cachetests/run.sh                 # version 0.4.5
#   VERSION=0.4.5 bash bench/cachetests/run.sh
#
# The package comes from the npm registry (npm pack) into a cache folder;
# the agent reads its pool from --snapshot-file, so no Consul is needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
VERSION="${VERSION:-0.4.5}"
log() { printf 'cachetests: %s\n' "$*" >&2; }
PATH="$PATH:/usr/sbin:/sbin"
for t in node npm nginx curl; do command -v "$t" >/dev/null || { log "missing $t"; exit 1; }; done
python="$(bash scripts/ensure-python.sh)"

pkgdir="${MESHLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlb}/http-cache-tests-$VERSION"
if [ ! -f "$pkgdir/package/cli.mjs" ] || [ ! -d "$pkgdir/package/node_modules" ]; then
  log "fetching http-cache-tests@$VERSION"
  mkdir -p "$pkgdir"
  (cd "$pkgdir" && npm pack --silent "http-cache-tests@$VERSION" >/dev/null && tar xzf "http-cache-tests-$VERSION.tgz" &&
    cd package && npm install --silent --omit=dev >/dev/null 2>&1)
fi
pkg="$pkgdir/package"
cp bench/cachetests/score.mjs "$pkg/score.mjs"
go build -o bin/agent ./cmd/agent

work="$(mktemp -d "${TMPDIR:-/tmp}/meshlb-cachetests.XXXXXX")"
chmod 755 "$work"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/server.pid" ] && kill "$(cat "$work/server.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
read -r p_srv p_agent p_admin p_nx <<<"$("$python" -c '
import socket; s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1", 0)) for x in s]; print(" ".join(str(x.getsockname()[1]) for x in s))')"

(cd "$pkg" && npm run --silent server --port="$p_srv" --pidfile="$work/server.pid" >"$work/server.log" 2>&1)
printf '{"version":1,"saved":"2026-01-01T00:00:00Z","pools":{"suite":[{"id":"suite-1","service":"suite","address":"127.0.0.1","port":%s,"weight":1}]}}\n' "$p_srv" >"$work/snap.json"
bin/agent --listen "127.0.0.1:$p_agent" --service suite --admin "127.0.0.1:$p_admin" --snapshot-file "$work/snap.json" \
  --consul-addr 127.0.0.1:1 --empty-pool-grace 1h --log-level error --cache 64m >"$work/agent.log" 2>&1 &
pids+=($!)
mkdir -p "$work/nginx-cache"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
error_log $work/nginx-error.log warn;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=c:10m max_size=64m;
  server {
    listen 127.0.0.1:$p_nx;
    location / { proxy_pass http://127.0.0.1:$p_srv; proxy_cache c; }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
for p in "$p_srv" "$p_agent" "$p_nx"; do
  ok=0
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$p/" && { ok=1; break; }; sleep 0.1; done
  [ "$ok" = 1 ] || { log "127.0.0.1:$p does not answer:"; tail -n 5 "$work"/*.log >&2; exit 1; }
done

stamp="$(date -u +%Y-%m-%dT%H%M%SZ)"
mkdir -p bench/results
for who in meshlb nginx; do
  port="$p_agent"; [ "$who" = nginx ] && port="$p_nx"
  log "running the suite through $who"
  (cd "$pkg" && npm run --silent cli --base="http://127.0.0.1:$port") >"bench/results/cachetests-$stamp-$who.json"
done
nv="$(nginx -v 2>&1 | sed 's|.*nginx/||')"
{
  echo "# http-cache-tests $VERSION, $(date -u '+%Y-%m-%d %H:%M UTC'): meshlb $(git rev-parse --short HEAD) vs nginx $nv proxy_cache"
  (cd "$pkg" && node score.mjs "$root/bench/results/cachetests-$stamp-meshlb.json" "$root/bench/results/cachetests-$stamp-nginx.json")
  echo
  echo "meshlb's failures (⛔ required, ⚠️ optimal, 🔹 setup):"
  (cd "$pkg" && node score.mjs --fails "$root/bench/results/cachetests-$stamp-meshlb.json" | tail -n +2)
} | tee "bench/results/cachetests-$stamp.md"
