#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: redis-server from Debian's packages if missing,
# then a virtual environment in .venv with apnsd and its test dependencies installed.
# With --test it also installs what the tests drive besides Python: curl (an independent HTTP/2
# client), PHP and Ruby with their Redis clients (the documented one-liners are run for real), and
# tinyproxy (the HTTP CONNECT proxy the proxy tests put in front of the mock gateway), and promtool
# (Debian's prometheus package) to check deploy/prometheus/alerts.yml, and gcc with OpenSSL's headers
# (the benchmarks' C binary sink, which tests/e2e/test_binsinks.py builds and checks beside the Python one), and
# Node.js (tests/e2e/test_interop_node.py runs apnsd against independent gateways on Node's http2 and tls modules).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ "${1:-}" = "--test" ]; then
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  command -v php >/dev/null 2>&1 && php -r 'exit(class_exists("Redis") ? 0 : 1);' 2>/dev/null || need_apt+=(php-cli php-redis)
  command -v ruby >/dev/null 2>&1 && ruby -e 'require "redis"' 2>/dev/null || need_apt+=(ruby ruby-redis)
  [ -x /usr/bin/tinyproxy ] || command -v tinyproxy >/dev/null 2>&1 || need_apt+=(tinyproxy)
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v gcc >/dev/null 2>&1 && [ -f /usr/include/openssl/ssl.h ] || need_apt+=(gcc libc6-dev libssl-dev)
  command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: ${need_apt[*]} missing; run as root or: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]} from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The packages start system-wide services (redis on :6379, tinyproxy on :8888); apnsd's demo and
  # tests start their own on free loopback ports and leave those alone.
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.apnsd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing apnsd and test dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/apnsd)"
