#!/bin/bash
# The XDP option (`bpfipt xdp generic|native`) end to end, in each mode, with real traffic in
# client -- fw -- server namespaces: INPUT drops and accepts at XDP, FORWARD through the fast
# path (delivered, TTL decremented, counted once), FORWARD drops, REJECT still answered (by
# the TC path), a veth created after the last commit gets the XDP program within a second,
# and switching the option off and on under traffic never lets a dropped packet through nor
# counts one twice. Native mode: the peers c0 and s0 get an XDP program of their own (a veth
# accepts native redirects only then), and datagrams of a local socket arriving on a veth
# (CHECKSUM_PARTIAL) are forwarded by the stack.
#   compat-tests/xdp.sh [generic|native ...]   (default: both)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init
modes=("$@")
[ ${#modes[@]} = 0 ] && modes=(generic native)
IPT=/usr/sbin/iptables-legacy
TTLRECV="$ROOT/compat-tests/tools/ttlrecv.py"
RAWUDP="$ROOT/compat-tests/tools/rawudp.py"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; e2e_cleanup' EXIT

PASS_O=$(xdp_pass_obj "$tmp") || exit 1

send() { # NS DST PORT N: N datagrams, 2 ms apart
    ip netns exec "$1" python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"bpfipt-xdp-test!", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)' "$2" "$3" "$4"
}
refused() { # NS DST PORT: 0 if a TCP connect is refused (an RST came back)
    ip netns exec "$1" python3 -c '
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except ConnectionRefusedError:
    sys.exit(0)
except OSError:
    pass
sys.exit(1)' "$2" "$3"
}
pkts() { # NS CHAIN N: packets counted by rule N of CHAIN
    shim "$1" $IPT -L "$2" -v -x -n --line-numbers | awk -v n="$3" '$1 == n { print $2 }'
}

for mode in "${modes[@]}"; do
    echo "--- mode $mode"
    topo3 "x${mode:0:3}"
    if [ "$mode" = native ]; then
        ip -n "$C" link set dev c0 xdpdrv obj "$PASS_O" sec xdp
        ip -n "$S" link set dev s0 xdpdrv obj "$PASS_O" sec xdp
    fi
    shim "$F" $IPT -A INPUT -p udp --dport 5001 -j DROP
    shim "$F" $IPT -A INPUT -p udp --dport 5002 -j ACCEPT
    shim "$F" $IPT -A INPUT -p tcp --dport 5003 -j REJECT --reject-with tcp-reset
    shim "$F" $IPT -P FORWARD DROP
    shim "$F" $IPT -A FORWARD -i f0 -o f1 -p udp --dport 6000 -m ttl --ttl-eq 63 -j ACCEPT
    shim "$F" $IPT -A FORWARD -p udp --dport 6001 -j DROP
    shim "$F" $IPT -A FORWARD -p tcp --dport 6003 -j REJECT --reject-with tcp-reset
    out=$(ip netns exec "$F" "$BPFIPT" xdp "$mode")
    check "$mode: bpfipt xdp $mode attaches to f0 and f1 ($out)" \
        grep -q "attached to: f0($mode) f1($mode)" <<< "$out"
    check "$mode: lo has no XDP program" sh -c "! ip -n $F link show lo | grep -q prog/xdp"
    # Neighbours known, so the fast path takes the first packet too.
    ip netns exec "$F" ping -c1 -W1 10.1.0.2 >/dev/null; ip netns exec "$F" ping -c1 -W1 10.2.0.2 >/dev/null

    # INPUT
    x0=$(reason "$F" XdpInputDone)
    ip netns exec "$F" python3 "$UDPFLOW" recv 5001,5002 3 > "$tmp/in" &
    sleep 0.3
    send "$C" 10.1.0.1 5001 50; send "$C" 10.1.0.1 5002 50
    wait
    check "$mode: INPUT DROP at XDP: nothing arrives ($(tr '\n' ' ' < "$tmp/in"))" grep -qx "5001 0" "$tmp/in"
    check "$mode: INPUT ACCEPT: all 50 arrive" grep -qx "5002 50" "$tmp/in"
    check "$mode: INPUT counters 50 and 50 ($(pkts "$F" INPUT 1), $(pkts "$F" INPUT 2))" \
        [ "$(pkts "$F" INPUT 1)/$(pkts "$F" INPUT 2)" = 50/50 ]
    x1=$(reason "$F" XdpInputDone)
    check "$mode: the accepted ones were classified at XDP ($x0 -> $x1)" [ $((x1 - x0)) -ge 50 ]
    check "$mode: INPUT REJECT answers with an RST (through TC)" refused "$C" 10.1.0.1 5003
    check "$mode: the REJECT rule counted it once ($(pkts "$F" INPUT 3))" [ "$(pkts "$F" INPUT 3)" = 1 ]

    # FORWARD
    f0=$(reason "$F" XdpForwarded)
    ip netns exec "$S" python3 "$TTLRECV" 6000 3 > "$tmp/fwd" &
    ip netns exec "$S" python3 "$TTLRECV" 6001 3 > "$tmp/fdrop" &
    sleep 0.3
    send "$C" 10.2.0.2 6000 100; send "$C" 10.2.0.2 6001 100
    wait
    f1=$(reason "$F" XdpForwarded)
    check "$mode: FORWARD ACCEPT: 100 arrive with TTL 63 ($(cat "$tmp/fwd"))" grep -qx "100 63" "$tmp/fwd"
    if [ "$mode" = generic ]; then
        check "$mode: they took the fast path ($f0 -> $f1 redirected)" [ $((f1 - f0)) -ge 100 ]
    else
        # A native redirect would send a local sender's CHECKSUM_PARTIAL datagram with its
        # checksum unfinished: from a veth, such datagrams (these) are left to the stack.
        check "$mode: from a veth they took the stack ($f0 -> $f1 redirected)" [ $((f1 - f0)) = 0 ]
    fi
    check "$mode: FORWARD ACCEPT counted 100 ($(pkts "$F" FORWARD 1))" [ "$(pkts "$F" FORWARD 1)" = 100 ]
    # Whole frames (AF_PACKET): a right checksum takes the fast path in both modes; a wrong
    # one is forwarded as the kernel does (generic: redirected as is; native: by the stack)
    # and dropped by the receiver.
    f0mac=$(ip -n "$F" -j link show f0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')
    ip netns exec "$S" nstat -n
    r0=$(reason "$F" XdpForwarded)
    ip netns exec "$S" python3 "$TTLRECV" 6000 2 > "$tmp/raw" &
    sleep 0.3
    ip netns exec "$C" python3 "$RAWUDP" c0 "$f0mac" 10.1.0.2 10.2.0.2 6000 40 good
    ip netns exec "$C" python3 "$RAWUDP" c0 "$f0mac" 10.1.0.2 10.2.0.2 6000 40 bad
    wait
    r1=$(reason "$F" XdpForwarded)
    bad=$(ip netns exec "$S" nstat -az UdpInCsumErrors | awk '/UdpInCsumErrors/ { print $2 }')
    check "$mode: whole frames: the 40 right ones arrive ($(cat "$tmp/raw"))" grep -qx "40 63" "$tmp/raw"
    check "$mode: whole frames: the 40 wrong ones reach the server and fail its checksum ($bad)" [ "$bad" = 40 ]
    if [ "$mode" = generic ]; then
        check "$mode: whole frames: all 80 redirected ($r0 -> $r1)" [ $((r1 - r0)) = 80 ]
    else
        check "$mode: whole frames: the 40 right ones redirected ($r0 -> $r1)" [ $((r1 - r0)) = 40 ]
    fi
    check "$mode: FORWARD ACCEPT counted 180 ($(pkts "$F" FORWARD 1))" [ "$(pkts "$F" FORWARD 1)" = 180 ]
    check "$mode: FORWARD DROP: nothing arrives ($(cat "$tmp/fdrop"))" grep -qx "0 -" "$tmp/fdrop"
    check "$mode: FORWARD DROP counted 100 ($(pkts "$F" FORWARD 2))" [ "$(pkts "$F" FORWARD 2)" = 100 ]
    check "$mode: FORWARD REJECT answers with an RST (through TC)" refused "$C" 10.2.0.2 6003
    check "$mode: the FORWARD REJECT rule counted it once ($(pkts "$F" FORWARD 3))" \
        [ "$(pkts "$F" FORWARD 3)" = 1 ]

    # A veth created after the last commit.
    ip -n "$F" link add n0 type veth peer name n1
    ip -n "$F" link set n0 up; ip -n "$F" link set n1 up
    ok=1
    for _ in $(seq 10); do
        ip -n "$F" link show n0 | grep -q "prog/xdp" && ip -n "$F" link show n1 | grep -q "prog/xdp" && { ok=0; break; }
        sleep 0.1
    done
    check "$mode: a veth created after the last commit has the XDP program within a second" [ $ok = 0 ]

    # Off and on under traffic: 6001 (dropped) never arrives; every accepted packet is
    # counted exactly once, whichever path took it.
    a0=$(pkts "$F" FORWARD 1)
    ip netns exec "$S" python3 "$UDPFLOW" recv 6000,6001 6 > "$tmp/sw" &
    sleep 0.3
    ip netns exec "$C" python3 "$UDPFLOW" send 10.2.0.2 6000,6001 4 1000 &
    for m in off "$mode" off generic native off "$mode" generic "$mode"; do
        ip netns exec "$F" "$BPFIPT" xdp "$m" >/dev/null || fail "$mode: bpfipt xdp $m"
        sleep 0.4
    done
    wait
    a1=$(pkts "$F" FORWARD 1)
    got=$(awk '$1 == 6000 { print $2 }' "$tmp/sw")
    check "$mode: switching under traffic: no dropped packet arrives ($(tr '\n' ' ' < "$tmp/sw"))" \
        grep -qx "6001 0" "$tmp/sw"
    check "$mode: switching under traffic: accepted ones arrive ($got)" [ "${got:-0}" -gt 1000 ]
    check "$mode: switching under traffic: each accepted packet counted once ($((a1 - a0)) counted, $got arrived)" \
        [ $((a1 - a0)) = "$got" ]
    out=$(ip netns exec "$F" "$BPFIPT" xdp off)
    check "$mode: bpfipt xdp off removes the programs" sh -c "! ip -n $F link show | grep -q prog/xdp"
done
e2e_summary
