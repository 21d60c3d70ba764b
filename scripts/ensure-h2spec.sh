#!/usr/bin/env bash
# ensure-h2spec.sh: make h2spec (the HTTP/2 conformance suite the agent's
# tests run) available as bin/h2spec and print its path. It is built once
# from the Go module proxy into a cache outside the clone,
# ${MESHLB_CACHE:-$HOME/.cache/meshlb}, as deploy/consul/install.sh does
# for Consul. Idempotent.
set -euo pipefail

version="v2.2.1+incompatible" # what @latest resolves to; the last release
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MESHLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshlb}"
dir="$cache/h2spec-${version%%+*}"
link="$repo_root/bin/h2spec"

if ! [ -x "$dir/h2spec" ] || ! "$dir/h2spec" --version >/dev/null 2>&1; then
  command -v go >/dev/null || { echo "ensure-h2spec: go is not on PATH" >&2; exit 1; }
  echo "ensure-h2spec: building h2spec $version from the Go module proxy" >&2
  mkdir -p "$dir"
  # Outside any module, so the clone's go.mod and GOWORK play no part.
  (cd "$dir" && GOWORK=off GOFLAGS=-mod=mod GOBIN="$dir" go install "github.com/summerwind/h2spec/cmd/h2spec@$version")
fi
mkdir -p "$repo_root/bin"
ln -sfn "$dir/h2spec" "$link"
echo "$link"
