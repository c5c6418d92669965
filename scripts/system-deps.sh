#!/usr/bin/env bash
# Install the system programs the test suite starts itself: memcached,
# redis-server, Chromium (for the browser tests) and wrk (for the benchmarks).
# Debian/Ubuntu, as root.
set -euo pipefail

need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # the benchmarks' load generator

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
