#!/usr/bin/env bash
# Install the system programs the test suite starts itself: memcached,
# redis-server, redis-sentinel and openssl (the Sentinel and TLS tests),
# rabbitmq-server (the suite runs a node of its own), Chromium (for the
# browser tests), wrk (for the benchmarks), Node.js (for the widget's unit
# tests, tests/js/) and, on a Debian system Python, python3-venv (for the
# Makefile's .venv).
# Debian/Ubuntu, as root.
set -euo pipefail

need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)  # tests/test_sentinel.py
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # its TLS redis-server's certificate
# Debian puts it in /usr/sbin, outside a user's PATH
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # the benchmarks' load generator
command -v node >/dev/null 2>&1 || need+=(nodejs)  # `node --test tests/js/`
# `make` builds its own virtual environment; Debian's Python needs python3-venv for it.
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Missing: ${need[*]}. Install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
fi
echo "Installing ${need[*]} with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
