#!/bin/bash
# Stateful rules against the kernel: two copies of a client -- fw -- server network (c
# 10.1.0.2, f 10.1.0.1 | 10.2.0.1 forwarding, s 10.2.0.2); in one fw the rules are loaded by
# the real iptables-legacy-restore and enforced by ip_tables with nf_conntrack, in the other
# through the shim and enforced by bpfipt's eBPF datapath and its conntrack. Each ruleset is
# a typical stateful one (ESTABLISHED,RELATED accepted, NEW allowed per port, INVALID dropped,
# DROP or REJECT for the rest) on FORWARD, INPUT or OUTPUT; each probe (a TCP connection with
# FIN or RST teardown, a UDP request, a ping, a TCP segment without a handshake, a NEW from
# the wrong side, an ICMP error for a UDP flow, a flow idle past a shortened timeout) runs on
# both networks at once and what the endpoint saw must be the same word.
# With --xdp MODE, bpfipt's fw also runs the XDP option (`bpfipt xdp generic|native`), which
# must leave every packet of a conntrack ruleset to the TC programs and change no word, no
# counter; in native mode c0 and s0 of both networks get an XDP program that passes all (a
# veth accepts native redirects only then), so that the two networks stay alike.
#
#   compat-tests/stateful.sh [-v] [--xdp generic|native]
#
# Prints "stateful: A agree of N"; exit status 0 only if all agree (77 without root).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
e2e_init
verbose=0
xdp=
while [ $# -gt 0 ]; do
    case "$1" in
        -v) verbose=1 ;;
        --xdp) xdp="${2:-}"; shift ;;
        *) echo "usage: $0 [-v] [--xdp generic|native]" >&2; exit 2 ;;
    esac
    shift
done
case "$xdp" in
    "" | generic | native) ;;
    *) echo "$0: --xdp takes generic or native, not '$xdp'" >&2; exit 2 ;;
esac
py=/usr/bin/python3
[ -x $py ] || py=python3
PROBE="$here/tools/ctprobe.py"

topo3 k; KC=$C; KF=$F; KS=$S
topo3 b; BC=$C; BF=$F; BS=$S
# topo3 names them in command substitutions, where ns_new cannot record them for cleanup.
E2E_NS+=("$KC" "$KF" "$KS" "$BC" "$BF" "$BS")
STATE=$(mktemp -d)/conn
trap 'rm -rf "$(dirname "$STATE")"; e2e_cleanup' EXIT INT TERM
if [ "$xdp" = native ]; then
    pass_o=$(xdp_pass_obj "$(dirname "$STATE")") || exit 1
    for ns in "$KC" "$BC"; do ip -n "$ns" link set dev c0 xdpdrv obj "$pass_o" sec xdp; done
    for ns in "$KS" "$BS"; do ip -n "$ns" link set dev s0 xdpdrv obj "$pass_o" sec xdp; done
fi
for ns in "$KC" "$KF" "$KS" "$BC" "$BF" "$BS"; do
    # ICMP errors in quick succession must not be rate limited on either side.
    ip netns exec "$ns" sysctl -qw net.ipv4.icmp_ratelimit=0
    ip netns exec "$ns" "$py" "$PROBE" serve >/dev/null 2>&1 &
done
sleep 0.5

agree=0
total=0

# ns_of SIDE WHO: the namespace of c, f or s on side k or b.
ns_of() {
    case "$1$2" in
        kc) echo "$KC" ;; kf) echo "$KF" ;; ks) echo "$KS" ;;
        bc) echo "$BC" ;; bf) echo "$BF" ;; bs) echo "$BS" ;;
    esac
}

# load NAME: the filter ruleset on stdin into both fws; both conntrack tables emptied.
load() {
    local name="$1" rules
    rules=$(cat)
    echo "--- $name"
    printf '%s\n' "$rules" | kern "$KF" iptables-legacy-restore || fail "$name: kernel restore"
    printf '%s\n' "$rules" | shim "$BF" iptables-legacy-restore || fail "$name: shim restore"
    kern "$KF" conntrack -F >/dev/null 2>&1
    kern "$BF" "$BPFIPT" conntrack -F >/dev/null 2>&1
    if ! kern "$BF" "$BPFIPT" status | grep -q "ipv4: enforced by the eBPF datapath"; then
        fail "$name: not enforced by the eBPF datapath"
        kern "$BF" "$BPFIPT" status | sed 's/^/    /'
    fi
    if [ -n "$xdp" ]; then
        local out
        # The setting outlives commits; asking again only reports it.
        out=$(kern "$BF" "$BPFIPT" xdp "$xdp" 2>&1)
        grep -q "attached to: f0($xdp) f1($xdp)" <<< "$out" ||
            fail "$name: bpfipt xdp $xdp: $out"
    fi
}

# run SIDE WHO WHAT ARGS...: one probe on one side; prints its word.
run() {
    local ns side="$1"
    ns=$(ns_of "$1" "$2")
    shift 2
    case "$1" in
        ping) ip netns exec "$ns" ping -c1 -W1 "$2" >/dev/null 2>&1 && echo ok || echo fail ;;
        # seg saves its connection's numbers for segback, one file per side.
        *) ip netns exec "$ns" env CTPROBE_STATE="$STATE.$side" "$py" "$PROBE" "$@" 2>&1 |
               tail -1 ;;
    esac
}

# both WHO WHAT ARGS...: the probe on both sides at once; sets k and b to their words.
both() {
    local kf bf
    kf=$(mktemp); bf=$(mktemp)
    run k "$@" >"$kf" &
    local kp=$!
    run b "$@" >"$bf" &
    wait $kp $!
    k=$(cat "$kf"); b=$(cat "$bf"); rm -f "$kf" "$bf"
}

# probe WHO WHAT ARGS...: the probe on both sides; their words must be equal.
probe() {
    local k b
    both "$@"
    total=$((total + 1))
    if [ "$k" = "$b" ]; then
        agree=$((agree + 1))
        [ $verbose = 1 ] && echo "ok   $*: $k"
    else
        echo "DIFF $*: kernel $k, bpfipt $b"
    fi
}

load "FORWARD: established accepted, NEW per port from the client side" <<'EOF'
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i f0 -p tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i f0 -p udp -m multiport --dports 53,9999 -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i f0 -p icmp --icmp-type echo-request -m conntrack --ctstate NEW -j ACCEPT
COMMIT
EOF
probe c tcp 10.2.0.2 22
probe c tcp 10.2.0.2 80
probe c udp 10.2.0.2 53
probe c udp 10.2.0.2 5353
probe c udp 10.2.0.2 9999          # port unreachable from s: RELATED
probe c ping 10.2.0.2
probe s ping 10.1.0.2              # NEW from the wrong side
probe s tcp 10.1.0.2 22
probe s udp 10.1.0.2 53
probe c raw 10.2.0.2 22 A --sport 41001   # no handshake: loose pickup, NEW to 22
probe c raw 10.2.0.2 80 A --sport 41002   # NEW to 80: dropped
probe c raw 10.2.0.2 22 SA --sport 41003  # SYN/ACK out of nowhere: INVALID
probe c raw 10.2.0.2 22 FA --sport 41004
probe c raw 10.2.0.2 22 R --sport 41005
probe c raw 10.2.0.2 22 SF --sport 41006  # bad flags: INVALID
# Late segments after a teardown, numbered from the connection itself (seg learns its ISNs).
probe c seg 10.2.0.2 22 --sport 41010 --teardown rst            # after the RST: CLOSE
probe c tcp 10.2.0.2 22 --sport 41010     # reopened after the RST
probe c seg 10.2.0.2 22 --sport 41011 --teardown fin            # after FIN teardown: TIME_WAIT
probe s segback                           # the server side of that flow
probe s raw 10.1.0.2 41012 A --sport 22   # a server-side segment of no flow: NEW, wrong side

# counters NAME: FORWARD's (or $CHAIN's) counters (packets and bytes of every rule and the
# policy) must be the kernel's after the probes of the ruleset; one more probe of the total.
counters() {
    local k b c="${CHAIN:-FORWARD}"
    k=$(kern "$KF" iptables-legacy-save -c -t filter | grep -E "^(:$c|\[.*-A $c )")
    b=$(shim "$BF" iptables-legacy-save -c -t filter | grep -E "^(:$c|\[.*-A $c )")
    total=$((total + 1))
    if [ "$k" = "$b" ]; then
        agree=$((agree + 1))
        [ $verbose = 1 ] && echo "ok   counters $1"
    else
        echo "DIFF counters $1:"; diff <(echo "$k") <(echo "$b") | sed 's/^/    /'
    fi
}

# wprobe ARGS...: a probe, then FORWARD's counters: whether the firewall passed, dropped as
# INVALID or ignored a segment shows in them even when the endpoints answer nothing.
wprobe() {
    probe "$@"
    counters "after $*"
}

# ctset NAME VALUE: net.netfilter.nf_conntrack_NAME in the kernel's firewall and the same
# setting in bpfipt's.
ctset() {
    kern "$KF" sysctl -qw "net.netfilter.nf_conntrack_$1=$2"
    kern "$BF" "$BPFIPT" conntrack --set "$1" "$2"
}

# TCP window tracking (tcp_in_window). Every segment is numbered from a live connection (seg
# learns the ISNs from its SYN/ACK): D is added to the client's next sequence number (--seq)
# or to the server's (--ack). Linux offers window scaling (shift 7 here), so the server's
# window is about 64 KiB: +20000 is inside it only when the scale is applied.
load "FORWARD: TCP windows, INVALID dropped and counted" <<'EOF'
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -m conntrack --ctstate ESTABLISHED --ctexpire 0:400 -j ACCEPT
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i f0 -p tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
EOF
# The --ctexpire rule counts the packets after which the connection has a short timeout: the
# unacknowledged-data, retransmission and zero-window ones (300 s) instead of ESTABLISHED's.
wprobe c seg 10.2.0.2 22 --sport 41500 --len 10                  # in window: data
wprobe c seg 10.2.0.2 22 --sport 41501 --len 10 --seq 20000      # in the scaled window
wprobe c seg 10.2.0.2 22 --sport 41502 --len 10 --seq 300000     # beyond it: INVALID
wprobe c seg 10.2.0.2 22 --sport 41503 --len 10 --seq -300000    # old data: ignored, passes
wprobe c seg 10.2.0.2 22 --sport 41504 --ack 300000              # ACK of unsent data: INVALID
wprobe c seg 10.2.0.2 22 --sport 41505 --ack -300000             # very old ACK: ignored
wprobe c seg 10.2.0.2 22 --sport 41506 --flags R --seq 100       # RST not exact: challenge ACK
wprobe c seg 10.2.0.2 22 --sport 41507 --flags R --seq -100000   # RST before maxack: INVALID
wprobe c seg 10.2.0.2 22 --sport 41508 --flags R                 # exact RST: CLOSE
wprobe c seg 10.2.0.2 22 --sport 41509 --flags FA                # FIN in window
wprobe c seg 10.2.0.2 22 --sport 41510 --flags FA --seq 300000   # FIN out of window
wprobe c seg 10.2.0.2 22 --sport 41511 --win 0                   # zero window
wprobe c seg 10.2.0.2 22 --sport 41512 --repeat 4                # the same ACK 4 times
wprobe c seg 10.2.0.2 22 --sport 41520 --teardown fin            # late ACK in window: TIME_WAIT
wprobe s segback                                                 # the server's late ACK
wprobe s segback --seq 300000                                    # ... out of window
wprobe c seg 10.2.0.2 22 --sport 41521 --teardown fin --seq 300000
wprobe c seg 10.2.0.2 22 --sport 41522 --teardown fin --len 10   # late data
wprobe c seg 10.2.0.2 22 --sport 41523 --teardown rst            # after RST, in window
wprobe s segback
wprobe c seg 10.2.0.2 22 --sport 41524 --teardown rst --seq 300000
wprobe c seg 10.2.0.2 22 --sport 41525 --teardown rst --seq -300000
wprobe s segback --seq 300000

# nf_conntrack_tcp_be_liberal: out-of-window segments are not INVALID.
ctset tcp_be_liberal 1
wprobe c seg 10.2.0.2 22 --sport 41530 --len 10 --seq 300000     # liberal: passes
wprobe c seg 10.2.0.2 22 --sport 41531 --ack 300000
ctset tcp_be_liberal 0
# nf_conntrack_tcp_ignore_invalid_rst: a RST before the highest ACK is not INVALID.
ctset tcp_ignore_invalid_rst 1
wprobe c seg 10.2.0.2 22 --sport 41532 --flags R --seq -100000
ctset tcp_ignore_invalid_rst 0

# nf_conntrack_checksum: a received TCP, UDP or ICMP packet with a bad checksum is INVALID
# (raw sockets: the checksum is the probe's, CHECKSUM_NONE on the way); a local socket's
# (CHECKSUM_PARTIAL through the veth) is not checked. INPUT counts too.
load "checksums: INVALID dropped and counted, FORWARD and INPUT" <<'EOF'
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i f0 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
EOF
for chk in 1 0; do
    ctset checksum $chk
    wprobe c raw 10.2.0.2 22 S --sport 4160$chk --bad-csum
    wprobe c raw 10.2.0.2 22 S --sport 4161$chk
    wprobe c udpraw 10.2.0.2 53 --sport 4162$chk --bad-csum
    wprobe c udpraw 10.2.0.2 53 --sport 4163$chk
    wprobe c icmpraw 10.2.0.2 --bad-csum
    wprobe c icmpraw 10.2.0.2
    wprobe c tcp 10.2.0.2 22 --sport 4164$chk
    CHAIN=INPUT wprobe c raw 10.1.0.1 22 S --sport 4165$chk --bad-csum
    CHAIN=INPUT wprobe c raw 10.1.0.1 22 S --sport 4166$chk
done
ctset checksum 1

load "FORWARD: INVALID dropped, NEW only with SYN, REJECT the rest" <<'EOF'
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j DROP
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i f0 -p tcp --syn -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i f0 -p udp -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -p tcp -j REJECT --reject-with tcp-reset
-A FORWARD -j REJECT
COMMIT
EOF
probe c tcp 10.2.0.2 22
probe c tcp 10.2.0.2 9              # closed port: the server's RST is ESTABLISHED
probe c udp 10.2.0.2 53
probe c udp 10.2.0.2 9999
probe c raw 10.2.0.2 22 A --sport 41101   # NEW without SYN: REJECTed with a RST
probe c raw 10.2.0.2 22 SA --sport 41102  # INVALID: dropped
probe c ping 10.2.0.2
probe s tcp 10.1.0.2 22
probe s udp 10.1.0.2 53
probe s ping 10.1.0.2
probe c tcp 10.2.0.2 80 --rst
probe c tcp 10.2.0.2 8080

load "INPUT: the firewall as a server (state match), REJECT the rest" <<'EOF'
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT
-A INPUT -p tcp --dport 22 -m state --state NEW -j ACCEPT
-A INPUT -p icmp -m state --state NEW -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-port-unreachable
COMMIT
EOF
probe c tcp 10.1.0.1 22
probe c tcp 10.1.0.1 80
probe c udp 10.1.0.1 53
probe c ping 10.1.0.1
probe c raw 10.1.0.1 22 A --sport 41201
probe c raw 10.1.0.1 80 A --sport 41202
probe c raw 10.1.0.1 22 SA --sport 41203
probe f tcp 10.2.0.2 22            # the firewall as a client: replies ESTABLISHED
probe f udp 10.2.0.2 53
probe f udp 10.2.0.2 9999          # ICMP port unreachable back: RELATED
probe f ping 10.2.0.2
probe f tcp 10.1.0.2 80 --rst
probe s tcp 10.2.0.1 22
probe s tcp 10.2.0.1 8080

load "OUTPUT: only some NEW out, replies ESTABLISHED in" <<'EOF'
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT DROP [0:0]
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -p tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A OUTPUT -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT
-A OUTPUT -p udp --dport 53 -m conntrack --ctstate NEW -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset
COMMIT
EOF
probe f tcp 10.2.0.2 80
# REJECTed locally with a RST: nf_send_reset attaches the SYN's connection to it, so it is
# RELATED in OUTPUT and, looped through lo, in INPUT: the socket sees it (refused).
probe f tcp 10.2.0.2 22
probe f udp 10.2.0.2 53
probe f tcp 10.1.0.2 80 --rst
probe f ping 10.2.0.2
probe c tcp 10.1.0.1 22            # a server on fw: OUTPUT passes the replies as ESTABLISHED
probe c tcp 10.1.0.1 80
probe c ping 10.1.0.1
probe f tcp 127.0.0.1 22           # over lo: OUTPUT then INPUT of the same state
probe f udp 127.0.0.1 53

load "conntrack tuple, status, expiry and direction conditions" <<'EOF'
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED --ctdir REPLY --ctorigsrc 10.1.0.0/24 -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW,ESTABLISHED --ctdir ORIGINAL --ctproto tcp --ctorigdstport 22 -j ACCEPT
-A FORWARD -p udp -m conntrack --ctstatus SEEN_REPLY -j ACCEPT
-A FORWARD -p udp -m conntrack --ctstate NEW --ctrepldst 10.1.0.2 --ctreplsrcport 53 -j ACCEPT
-A FORWARD -p icmp -m conntrack ! --ctstatus ASSURED --ctexpire 0:100 -j ACCEPT
COMMIT
EOF
probe c tcp 10.2.0.2 22
probe c tcp 10.2.0.2 80
probe s tcp 10.1.0.2 22            # NEW allowed out, its replies are not
probe c udp 10.2.0.2 53
probe c udp 10.2.0.2 5353
probe s udp 10.1.0.2 53
probe c ping 10.2.0.2
probe s ping 10.1.0.2

load "expiry: a UDP flow idle past nf_conntrack_udp_timeout is NEW again" <<'EOF'
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i f0 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
EOF
ctset udp_timeout 2
probe c udp 10.2.0.2 5353 --sport 41301   # unanswered (port unreachable): an unreplied flow
probe s udp 10.1.0.2 41301 --sport 5353   # the reply direction while the flow lives
sleep 3
probe s udp 10.1.0.2 41301 --sport 5353   # idle past the timeout: NEW from the wrong side
probe c udp 10.2.0.2 53 --sport 41302     # answered: replied flow
probe c udp 10.2.0.2 53 --sport 41302     # still ESTABLISHED
sleep 3
probe s udp 10.1.0.2 41302 --sport 5300   # other tuple: NEW from the wrong side
ctset udp_timeout 30

# The accept-established shortcut (an unconditional ESTABLISHED,RELATED ACCEPT first in a
# built-in chain: bpfipt accepts those packets without classifying them) counts on its rule
# what the kernel counts; with a rule before it there is no shortcut, and the same counts.
for first in "" "-A FORWARD -s 192.0.2.7/32 -j DROP"; do
    load "FORWARD counters${first:+, a rule before the ESTABLISHED one}" <<EOF
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
$first
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i f0 -p tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i f0 -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -i f0 -p udp -m udp --dport 9999 -j ACCEPT
COMMIT
EOF
    probe c tcp 10.2.0.2 22 --sport 41400
    probe c udp 10.2.0.2 53 --sport 41401
    probe c udp 10.2.0.2 9999 --sport 41402   # port unreachable back: RELATED
    probe c ping 10.2.0.2                     # NEW, no rule: the policy
    counters "${first:-shortcut}"
done

if [ -n "$xdp" ]; then
    # XDP saw the packets and left them to TC: it classifies nothing while the tracker is on.
    passed=$(reason "$BF" XdpPass)
    [ "$passed" -ge "$total" ] ||
        fail "--xdp $xdp: XDP passed $passed packets to TC, fewer than the $total probes"
    n=$(( $(reason "$BF" XdpForwarded) + $(reason "$BF" XdpInputDone) ))
    [ "$n" = 0 ] || fail "--xdp $xdp: XDP decided $n packets of conntrack rulesets"
    echo "stateful: $agree agree of $total (XDP $xdp left $passed packets to TC)"
else
    echo "stateful: $agree agree of $total"
fi
[ "$E2E_FAILS" = 0 ] && [ "$agree" = "$total" ]
