#!/usr/bin/env bash
# ensure-python.sh: print the path of a python3 that imports tornado,
# installing Debian's python3-tornado (or, without apt, pip's tornado) if
# none does. The first python3 on PATH may be another interpreter without
# it, so /usr/bin/python3 is tried first.
set -euo pipefail
find_python() {
  for py in "${MESHLB_PYTHON:-}" /usr/bin/python3 "$(command -v python3 || true)"; do
    [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import tornado' 2>/dev/null && { echo "$py"; return 0; }
  done
  return 1
}
if find_python; then exit 0; fi
if command -v apt-get >/dev/null; then
  echo "ensure-python: installing Debian's python3-tornado" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq python3-tornado >&2
else
  echo "ensure-python: no apt-get; installing tornado with pip" >&2
  python3 -m pip install --user 'tornado>=6.2' >&2
fi
find_python || { echo "ensure-python: still no python3 with tornado; install python3-tornado" >&2; exit 1; }
