#!/bin/bash
# Fetches Debian's iptables source package (with its test suites) into compat-tests/.cache and
# prints the source directory. Enables deb-src for the system's own suites when needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/.cache"
mkdir -p "$cache"
existing=$(find "$cache" -maxdepth 1 -type d -name 'iptables-*' | sort | tail -n 1)
if [ -n "$existing" ] && [ -f "$existing/iptables-test.py" ]; then
    echo "$existing"
    exit 0
fi
if ! apt-get source --print-uris iptables >/dev/null 2>&1; then
    src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ]; then
        sed 's/^Types: deb$/Types: deb-src/' "$src" > /etc/apt/sources.list.d/bpfipt-deb-src.sources
    else
        grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/bpfipt-deb-src.list
    fi
    apt-get update -qq >&2
fi
(cd "$cache" && apt-get source -qq iptables >&2 2>/dev/null || (cd "$cache" && apt-get source iptables >&2))
find "$cache" -maxdepth 1 -type d -name 'iptables-*' | sort | tail -n 1
