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
#
#   compat-tests/stateful.sh [-v]
#
# Prints "stateful: A agree of N"; exit status 0 only if all agree (77 without root).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
e2e_init
verbose=0
[ "${1:-}" = "-v" ] && verbose=1
py=/usr/bin/python3
[ -x $py ] || py=python3
PROBE="$here/tools/ctprobe.py"

topo3 k; KC=$C; KF=$F; KS=$S
topo3 b; BC=$C; BF=$F; BS=$S
# topo3 names them in command substitutions, where ns_new cannot record them for cleanup.
E2E_NS+=("$KC" "$KF" "$KS" "$BC" "$BF" "$BS")
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
}

# run SIDE WHO WHAT ARGS...: one probe on one side; prints its word.
run() {
    local ns
    ns=$(ns_of "$1" "$2")
    shift 2
    case "$1" in
        ping) ip netns exec "$ns" ping -c1 -W1 "$2" >/dev/null 2>&1 && echo ok || echo fail ;;
        *) ip netns exec "$ns" "$py" "$PROBE" "$@" 2>&1 | tail -1 ;;
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

# xprobe: a probe whose difference is known and documented (README, known differences):
# out-of-window TCP segments, which the kernel's tcp_in_window marks INVALID and bpfipt,
# without window tracking, does not. Counted apart; agreement is still reported.
known=0
xprobe() {
    local k b
    both "$@"
    known=$((known + 1))
    echo "known $*: kernel $k, bpfipt $b (${WHY:-out of window: not modelled})"
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
probe c tcp 10.2.0.2 22 --sport 41010 --rst
xprobe c raw 10.2.0.2 22 A --sport 41010   # after the RST: CLOSE
probe c tcp 10.2.0.2 22 --sport 41010     # reopened after the RST
probe c tcp 10.2.0.2 22 --sport 41011
xprobe c raw 10.2.0.2 22 A --sport 41011   # after FIN teardown: TIME_WAIT
xprobe s raw 10.1.0.2 41011 A --sport 22   # the server side of that flow
probe s raw 10.1.0.2 41012 A --sport 22   # a server-side segment of no flow: NEW, wrong side

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
kern "$KF" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=2
kern "$BF" "$BPFIPT" conntrack --set udp_timeout 2
probe c udp 10.2.0.2 5353 --sport 41301   # unanswered (port unreachable): an unreplied flow
probe s udp 10.1.0.2 41301 --sport 5353   # the reply direction while the flow lives
sleep 3
probe s udp 10.1.0.2 41301 --sport 5353   # idle past the timeout: NEW from the wrong side
probe c udp 10.2.0.2 53 --sport 41302     # answered: replied flow
probe c udp 10.2.0.2 53 --sport 41302     # still ESTABLISHED
sleep 3
probe s udp 10.1.0.2 41302 --sport 5300   # other tuple: NEW from the wrong side
kern "$KF" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=30
kern "$BF" "$BPFIPT" conntrack --set udp_timeout 30

# counters NAME: FORWARD's counters (packets and bytes of every rule and the policy) must be
# the kernel's after the probes of the ruleset; one more probe of the total.
counters() {
    local k b
    k=$(kern "$KF" iptables-legacy-save -c -t filter | grep -E '^(:FORWARD|\[.*-A FORWARD)')
    b=$(shim "$BF" iptables-legacy-save -c -t filter | grep -E '^(:FORWARD|\[.*-A FORWARD)')
    total=$((total + 1))
    if [ "$k" = "$b" ]; then
        agree=$((agree + 1))
        [ $verbose = 1 ] && echo "ok   counters $1"
    else
        echo "DIFF counters $1:"; diff <(echo "$k") <(echo "$b") | sed 's/^/    /'
    fi
}

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

echo "stateful: $agree agree of $total ($known known differences not counted: out-of-window TCP)"
[ "$E2E_FAILS" = 0 ] && [ "$agree" = "$total" ]
