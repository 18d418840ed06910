#!/bin/bash
# Builds the Debian package and checks it without installing it: its contents, and that the
# packaged iptables-bpf wrapper drives the packaged shim and daemon in a throwaway namespace.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init
deb=$("$ROOT/packaging/build-deb.sh" 2>/dev/null | tail -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; e2e_cleanup' EXIT
check "package built ($deb)" test -f "$ROOT/$deb"
dpkg -x "$ROOT/$deb" "$tmp/root"
lib=$(find "$tmp/root/usr/lib" -name libbpfipt.so)
for f in usr/sbin/bpfiptd usr/sbin/bpfipt usr/sbin/iptables-bpf usr/sbin/iptables-bpf-save usr/sbin/iptables-bpf-restore \
         usr/sbin/ip6tables-bpf usr/sbin/ip6tables-bpf-save usr/sbin/ip6tables-bpf-restore lib/systemd/system/bpfiptd.service; do
    check "package contains /$f" test -e "$tmp/root/$f"
done
check "package contains libbpfipt.so" test -n "$lib"
# Point the wrappers at the extracted library (they name the installed path).
sed -i "s|/usr/lib/[^/]*/bpfipt|$(dirname "$lib")|" "$tmp"/root/usr/sbin/*-bpf*
ns=$(ns_new pkg)
out=$(ip netns exec "$ns" env BPFIPT_DAEMON="$tmp/root/usr/sbin/bpfiptd" bash -c \
    "$tmp/root/usr/sbin/iptables-bpf -A INPUT -p tcp --dport 22 -j ACCEPT && $tmp/root/usr/sbin/iptables-bpf-save" 2>&1)
check "iptables-bpf -A then iptables-bpf-save shows the rule" grep -q -- '-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT' <<< "$out"
check "the kernel's tables stay empty" test -z "$(ip netns exec "$ns" iptables-legacy-save)"
ip netns exec "$ns" "$tmp/root/usr/sbin/bpfipt" daemon stop >/dev/null 2>&1
e2e_summary
