#!/bin/bash
# Installs what bpfipt needs to build and test on Debian 12, as root. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    clang-19 llvm-19 lld-19 libbpf-dev bpftool linux-libc-dev \
    iptables nftables iproute2 util-linux procps psmisc kmod \
    python3 python3-matplotlib iputils-ping netcat-openbsd socat hping3 tcpdump conntrack \
    build-essential pkg-config ca-certificates dpkg-dev linux-perf >/dev/null
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust (stable) with rustup first" >&2
    exit 1
fi
