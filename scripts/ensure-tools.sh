#!/usr/bin/env bash
# ensure-tools.sh: install the Debian tools the tests and benchmarks drive
# (wrk for load, iproute2 for test hosts in network namespaces, curl,
# chromium for the status page test), only
# those missing.
set -euo pipefail
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v ss >/dev/null || need+=(iproute2)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "ensure-tools: missing ${need[*]} and no apt-get to install them" >&2
  exit 1
fi
sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
echo "ensure-tools: installing ${need[*]}" >&2
$sudo_ apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
