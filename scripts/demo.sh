#!/bin/bash
# The bpfipt demo: namespaces client -- fw -- server, rules written with the real
# iptables-legacy binary under LD_PRELOAD=libbpfipt.so in fw, traffic, and the counters.
# Everything it creates is removed at the end, also on failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shim="$root/target/release/libbpfipt.so"
bpfipt="$root/target/release/bpfipt"
export BPFIPT_DAEMON="$root/target/release/bpfiptd"
[ -f "$shim" ] || (cd "$root" && cargo build --release)
p=bpfipt-demo
cleanup() {
    ip netns exec $p-fw "$bpfipt" daemon stop >/dev/null 2>&1 || true
    for n in client fw server; do ip netns del $p-$n 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fw() { ip netns exec $p-fw env LD_PRELOAD="$shim" "$@"; }

say "namespaces: client 10.1.0.2 -- 10.1.0.1 fw 10.2.0.1 -- 10.2.0.2 server"
for n in client fw server; do ip netns add $p-$n; ip -n $p-$n link set lo up; done
ip link add c0 netns $p-client type veth peer name f0 netns $p-fw
ip link add s0 netns $p-server type veth peer name f1 netns $p-fw
ip -n $p-client addr add 10.1.0.2/24 dev c0; ip -n $p-client link set c0 up
ip -n $p-server addr add 10.2.0.2/24 dev s0; ip -n $p-server link set s0 up
ip -n $p-fw addr add 10.1.0.1/24 dev f0; ip -n $p-fw link set f0 up
ip -n $p-fw addr add 10.2.0.1/24 dev f1; ip -n $p-fw link set f1 up
ip -n $p-client route add default via 10.1.0.1
ip -n $p-server route add default via 10.2.0.1
ip netns exec $p-fw sysctl -qw net.ipv4.ip_forward=1

say "rules, written by the unmodified iptables-legacy binary in fw (LD_PRELOAD=libbpfipt.so)"
set -x
fw iptables-legacy -P FORWARD DROP
fw iptables-legacy -N WEB
fw iptables-legacy -A FORWARD -p tcp --dport 80 -j WEB
fw iptables-legacy -A WEB -s 10.1.0.0/24 -j ACCEPT
fw iptables-legacy -A FORWARD -p tcp -m multiport --sports 80 -j ACCEPT
fw iptables-legacy -A FORWARD -p icmp --icmp-type echo-request -j ACCEPT
fw iptables-legacy -A FORWARD -p icmp --icmp-type echo-reply -j ACCEPT
fw iptables-legacy -A FORWARD -p tcp --dport 22 -j REJECT --reject-with tcp-reset
set +x

say "traffic from client to server"
ip netns exec $p-server sh -c 'while true; do printf "HTTP/1.0 200 OK\r\n\r\nhello from server\n" | nc -l -p 80 -q 1 >/dev/null 2>&1 || break; done' &
srv=$!
sleep 0.3
echo -n "ping 10.2.0.2:        "; ip netns exec $p-client ping -c 3 -i 0.2 -W 1 10.2.0.2 >/dev/null && echo "replies" || echo "no reply"
echo -n "http 10.2.0.2:80:     "; ip netns exec $p-client timeout 3 nc -w 2 10.2.0.2 80 </dev/null | tail -n 1 || echo "(no answer)"
echo -n "ssh 10.2.0.2:22:      "; ip netns exec $p-client timeout 3 nc -w 2 10.2.0.2 22 </dev/null && echo "connected" || echo "refused (tcp-reset) or dropped"
echo -n "udp 10.2.0.2:53:      "; ip netns exec $p-client timeout 2 sh -c 'echo x | nc -u -w 1 10.2.0.2 53' && echo "sent (policy DROP applies at fw)"
kill $srv 2>/dev/null || true

say "counters (iptables-legacy -L -v -n in fw, through the shim)"
fw iptables-legacy -L -v -n
say "iptables-legacy-save -c (through the shim)"
fw iptables-legacy-save -c | grep -v '^#'
say "the kernel's own ip_tables in fw stay empty (iptables-legacy-save without the shim):"
ip netns exec $p-fw iptables-legacy-save | grep -v '^#' || echo "(nothing)"
say "bpfipt status"
ip netns exec $p-fw "$bpfipt" status
