#!/usr/bin/env bash
# install.sh: make a Jaeger all-in-one binary available and print its path.
#
# Jaeger is the trace backend of `make demo TRACE=1` and of the demo's
# end-to-end test (the other tests use the project's own OTLP receiver).
#
# Order: a `jaeger` already on PATH; else a cached build; else build the
# Apache-2.0 all-in-one (github.com/jaegertracing/jaeger/cmd/jaeger, the
# OpenTelemetry-collector based "v2" binary) at module version v1.75.0 from the
# Go module proxy (v1.76.0 is served too, but is not an approved release in
# this project's package index). The build is cached outside the clone, in
# ${MESHLB_CACHE:-$HOME/.cache/meshlb}, and linked as bin/jaeger in the repo.
# Idempotent: running it again prints the same path and builds nothing.
#
# The module does not ship the web UI's compiled assets (a git submodule built
# with npm upstream), so this binary serves the query API (/api/traces/ID) and
# a placeholder page instead of the UI; meshlb's status page links there.
set -euo pipefail

version="v1.75.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${MESHLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlb}"
cached_bin="$cache/jaeger-$version/jaeger"
link="$repo_root/bin/jaeger"

log() { printf 'install.sh: %s\n' "$*" >&2; }

# 1. a jaeger on PATH (but not our own link, which is handled below).
if [ "${MESHLB_JAEGER_IGNORE_PATH:-}" != "1" ]; then
  if onpath="$(command -v jaeger 2>/dev/null)" && [ -n "$onpath" ] && [ "$(readlink -f "$onpath")" != "$(readlink -f "$link" 2>/dev/null || true)" ]; then
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

# 3. build from the Go module proxy, inside a copy of the module so that its
# own go.mod (and its replace directive) applies. MESHLB_NO_BUILD=1 (tests)
# says how instead.
if [ "${MESHLB_NO_BUILD:-}" = "1" ]; then
  log "Jaeger $version is not built yet: run 'bash deploy/jaeger/install.sh' (or 'make deps'; several minutes the first time)"
  exit 1
fi
command -v go >/dev/null || { log "go is not on PATH; install Go 1.26 first"; exit 1; }
# One build at a time: a second run waits for the first, then finds the
# cached binary.
mkdir -p "$cache"
exec 9>"$cache/jaeger-$version.lock"
if ! flock -n 9; then
  log "another install.sh is building Jaeger $version; waiting for it"
  flock 9
fi
if [ -x "$cached_bin" ] && "$cached_bin" version >/dev/null 2>&1; then
  mkdir -p "$repo_root/bin"
  ln -sfn "$cached_bin" "$link"
  echo "$link"
  exit 0
fi
log "building Jaeger all-in-one $version from the Go module proxy (several minutes on 2 cores the first time)"
work="$(mktemp -d "$cache/build-jaeger.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# Download into the module cache with the user's GOFLAGS/GOWORK out of the way.
export GOFLAGS=-mod=mod GOWORK=off
moddir="$(cd "$work" && go mod download -json "github.com/jaegertracing/jaeger@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
[ -d "$moddir" ] || { log "go mod download did not produce a module directory"; exit 1; }
cp -r "$moddir" "$work/src"
chmod -R u+w "$work/src"
cd "$work/src"
go build -trimpath -o "$work/jaeger" ./cmd/jaeger
"$work/jaeger" version >/dev/null 2>&1 || { log "the Jaeger just built does not run"; exit 1; }
mkdir -p "$(dirname "$cached_bin")"
mv "$work/jaeger" "$cached_bin"
mkdir -p "$repo_root/bin"
ln -sfn "$cached_bin" "$link"
log "built Jaeger all-in-one $version"
echo "$link"
