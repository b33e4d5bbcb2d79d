#!/usr/bin/env bash
# Installs the Debian packages that building rampart (and, with `test`, its test suite)
# needs, when they are missing. Used by `make demo`, `make test` and CI.
set -euo pipefail
want=(cmake pkg-config curl)   # cmake: libz-ng-sys, a C dependency of Pingora
if [ "${1:-}" = bench ]; then   # the load run: its load generator, the contenders, valgrind
  want+=(nginx wrk nghttp2-client openssl valgrind libnginx-mod-http-modsecurity modsecurity-crs)   # h2load: HTTP/2 against HTTP/1.1
fi
if [ "${1:-}" = test ]; then
  want+=(openssl prometheus redis-server victoria-metrics chromium)   # dev certificates; promtool and a real Prometheus; shared rate limits; the :9090 upstream; a real browser for the bot challenge
fi
if [ "${1:-}" = demo ]; then   # the demo's :9090 upstream
  want+=(victoria-metrics)
fi
if [ "${1:-}" = image ]; then   # building and running the container image here
  want+=(podman debootstrap binutils)
fi
python3 -c 'import ensurepip, venv' 2>/dev/null || want+=(python3-venv)

if ! command -v dpkg-query >/dev/null; then
  echo "deps: not a Debian system; make sure these are installed: ${want[*]}" >&2
  exit 0
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
