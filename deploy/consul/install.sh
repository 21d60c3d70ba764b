#!/usr/bin/env bash
# install.sh: make a Consul binary available and print its path.
#
# Order: a `consul` already on PATH; else a cached build; else build the
# MPL-2.0 release v1.16.1 from the Go module proxy (releases from 1.17 on are
# BSL and must not be used). The build is cached outside the clone, in
# ${MESHLB_CACHE:-$HOME/.cache/meshlb}, and linked as bin/consul in the repo.
# Idempotent: running it again prints the same path and builds nothing.
set -euo pipefail

version="v1.16.1"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${MESHLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlb}"
cached_bin="$cache/consul-$version/consul"
link="$repo_root/bin/consul"

log() { printf 'install.sh: %s\n' "$*" >&2; }

# 1. a consul on PATH (but not our own link, which is handled below).
if [ "${MESHLB_CONSUL_IGNORE_PATH:-}" != "1" ]; then
  if onpath="$(command -v consul 2>/dev/null)" && [ -n "$onpath" ] && [ "$(readlink -f "$onpath")" != "$(readlink -f "$link" 2>/dev/null || true)" ]; then
    echo "$onpath"
    exit 0
  fi
fi

# 2. a cached build.
if [ -x "$cached_bin" ] && "$cached_bin" version >/dev/null 2>&1; then
  mkdir -p "$repo_root/bin"
  ln -sfn "$cached_bin" "$link"
  echo "$link"
  exit 0
fi

# 3. build v1.16.1 from the Go module proxy, one build at a time: a second
# run (another clone, another test package) waits for the first and then
# finds the cached binary.
command -v go >/dev/null || { log "go is not on PATH; install Go 1.26 first"; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/consul-$version.lock"
if ! flock -n 9; then
  log "another install.sh is building Consul $version; waiting for it"
  flock 9
fi
if [ -x "$cached_bin" ] && "$cached_bin" version >/dev/null 2>&1; then
  mkdir -p "$repo_root/bin"
  ln -sfn "$cached_bin" "$link"
  echo "$link"
  exit 0
fi
log "building Consul $version from the Go module proxy (4-5 minutes on 2 cores the first time)"
mkdir -p "$cache"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# Download into a private module cache so the user's GOFLAGS/GOWORK don't interfere.
export GOFLAGS=-mod=mod GOWORK=off
moddir="$(cd "$work" && go mod download -json "github.com/hashicorp/consul@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
[ -d "$moddir" ] || { log "go mod download did not produce a module directory"; exit 1; }
cp -r "$moddir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
for r in ./api ./sdk ./proto-public ./envoyextensions ./troubleshoot; do
  mod="$(sed -n "s#^replace \([^ ]*\) => $r\$#\1#p" go.mod | head -1)"
  [ -n "$mod" ] || mod="github.com/hashicorp/consul/${r#./}"
  go mod edit -dropreplace="$mod"
done
GONOSUMDB='github.com/hashicorp/*' GOFLAGS=-mod=mod go build -trimpath -o "$work/consul" .
"$work/consul" version >/dev/null
mkdir -p "$(dirname "$cached_bin")"
mv "$work/consul" "$cached_bin"
mkdir -p "$repo_root/bin"
ln -sfn "$cached_bin" "$link"
log "built $("$cached_bin" version | head -1)"
echo "$link"
