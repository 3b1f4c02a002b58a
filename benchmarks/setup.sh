#!/usr/bin/env bash
# Idempotent: install what the benchmarks need on a fresh Debian 12 machine, if it is missing:
# nginx-light + the echo module (HTTP/2 sink), nghttp2-client (h2load, the HTTP/2 ceiling) and
# redis-server, gcc + libssl-dev (the C counting sink, benchmarks/binsink.c); then the project's .venv (scripts/setup.sh) if it does not exist yet, matplotlib for the
# charts, and the npm peers under benchmarks/peers/ when npm is there.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(nginx-light libnginx-mod-http-echo nghttp2-client redis-server gcc libc6-dev libssl-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "benchmarks/setup.sh: missing ${missing[*]}; run as root" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "benchmarks/setup.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # The packages may start system services (nginx on :80, redis on :6379); the benchmark never
  # uses them: it starts its own nginx and redis-server on free loopback ports.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for exe in nginx h2load redis-server; do
  command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || { echo "benchmarks/setup.sh: $exe not found after install" >&2; exit 1; }
done
[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || { echo "benchmarks/setup.sh: nginx echo module missing" >&2; exit 1; }
[ -x .venv/bin/python ] || bash scripts/setup.sh
# The error-answering binary sink, in C (benchmarks.run builds it too when missing or stale; Python fallback).
mkdir -p benchmarks/build
gcc -O2 -o benchmarks/build/binsink benchmarks/binsink.c -lssl -lcrypto
# Charts (matplotlib, the optional extra 'bench'): the results JSON is written without it.
.venv/bin/pip install -q -e '.[bench]' || echo "benchmarks/setup.sh: matplotlib not installed: no charts" >&2
# Peers measured in the same run (@parse/node-apn, node apn 1.7): npm packages, installed under
# benchmarks/peers/ and never committed. Without node/npm the peer figures are skipped.
if command -v npm >/dev/null 2>&1; then
  (cd benchmarks/peers && npm install --no-audit --no-fund --loglevel=error)
else
  echo "benchmarks/setup.sh: npm not found: peer figures (node-apn, apn 1.7) will be skipped" >&2
fi
echo "benchmarks/setup.sh: ready — run: .venv/bin/python -m benchmarks.run --quick"
