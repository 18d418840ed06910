#!/bin/bash
# End-to-end tests of the datapath in namespaces with real traffic: interfaces added after the
# last commit, the kernel fallback and strict mode, a daemon killed while traffic flows, and
# SIGKILL of any bpfipt process while large rulesets are committed under traffic.
#   compat-tests/datapath.sh [--rounds N]   (kill rounds, default 12)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init
rounds=12
[ "${1:-}" = "--rounds" ] && rounds=$2
IPT=/usr/sbin/iptables-legacy
SAVE=/usr/sbin/iptables-legacy-save
RESTORE=/usr/sbin/iptables-legacy-restore
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; e2e_cleanup' EXIT

pings() { # NS DST: 0 if DST answers a ping within 1 s
    ip netns exec "$1" ping -c 1 -W 1 "$2" >/dev/null 2>&1
}

# --- an interface added after the last commit is filtered within a second ---------------------
topo3 hp
shim "$F" $IPT -A INPUT -p icmp -j DROP
check "ping to fw is dropped on an interface present at commit" sh -c "! ip netns exec $C ping -c 1 -W 1 10.1.0.1 >/dev/null 2>&1"
N=$(ns_new hp-n)
ip link add n0 netns "$N" type veth peer name f2 netns "$F"
ip -n "$N" addr add 10.3.0.2/24 dev n0; ip -n "$N" link set n0 up
ip -n "$F" addr add 10.3.0.1/24 dev f2; ip -n "$F" link set f2 up
sleep 1
check "a veth added after the commit has the programs within a second" \
    sh -c "ip netns exec $F $BPFIPT status | grep 'tc ingress+egress:' | grep -qw f2"
check "ping to fw over the new veth is dropped" sh -c "! ip netns exec $N ping -c 1 -W 1 10.3.0.1 >/dev/null 2>&1"
shim "$F" $IPT -F INPUT
check "after -F, the new veth passes pings" pings "$N" 10.3.0.1
# INPUT empty with policy ACCEPT: its policy is counted at LOCAL_IN, the ingress program is off.
# `status` lists the hooks as the kernel reports them (BPF_PROG_QUERY).
tc_line() { ip netns exec "$F" $BPFIPT status | grep -E '^  tc (ingress\+)?egress:'; }
l=$(tc_line)
check "with INPUT empty, every interface has the egress program and none the ingress one ($l)" \
    [ "$l" = "  tc egress: lo f0 f1 f2" ]
check "with INPUT empty, status says the ingress program is off" \
    sh -c "ip netns exec $F $BPFIPT status | grep -q 'tc ingress: off'"
shim "$F" $IPT -A INPUT -i f2 -p icmp -j DROP
l=$(tc_line)
check "one INPUT rule puts the ingress program back on every interface ($l)" \
    [ "$l" = "  tc ingress+egress: lo f0 f1 f2" ]
check "and the new veth's pings are dropped again" sh -c "! ip netns exec $N ping -c 1 -W 1 10.3.0.1 >/dev/null 2>&1"
shim "$F" $IPT -F INPUT

# --- fragments for INPUT: whole datagrams, and a dropped one leaves no reassembly behind -----
# With ipfrag_time=1, a datagram whose fragments wait in the kernel's queue would earn an ICMP
# "fragment reassembly time exceeded" a second later; after an iptables DROP it never does.
frag_fates() { # WHO(shim|kern) NAME: the ICMP errors fragsend.py sees
    topo3 "$2"
    ip netns exec "$F" sysctl -qw net.ipv4.ipfrag_time=1 net.ipv4.icmp_ratemask=0
    "$1" "$F" $IPT -A INPUT -p udp --dport 53 -j DROP
    "$1" "$F" $IPT -A INPUT -p udp --dport 54 -j REJECT
    ip netns exec "$C" python3 "$ROOT/compat-tests/tools/fragsend.py" 10.1.0.2 10.1.0.1 2.5
}
kf=$(frag_fates kern frk); sf=$(frag_fates shim frs)
check "fragments for INPUT: the ICMP errors are the kernel's ($(echo "$kf" | tr '\n' ';'))" \
    [ "$kf" = "$sf" ]
check "fragments for INPUT: the kernel's errors are the expected ones" \
    [ "$kf" = "$(printf 'icmp11/1 about id 103\nicmp3/3 about id 101\nicmp3/3 about id 102')" ]

# --- fallback to the kernel, silently; strict mode refuses ----------------------------------
out=$(BPFIPT_STRICT=1 shim "$F" $IPT -A INPUT -m recent --name x --set 2>&1); rc=$?
check "BPFIPT_STRICT=1: a rule the datapath cannot run fails (status $rc)" [ $rc != 0 ]
check "BPFIPT_STRICT=1: the error names the rule and the extension" grep -q "INPUT rule 1: recent" <<< "$out"
check "BPFIPT_STRICT=1: nothing changed" sh -c "! $(printf '%q ' ip netns exec "$F" env LD_PRELOAD="$SHIM" $SAVE) | grep -q recent"
out=$(shim "$F" $IPT -A INPUT -p icmp -m recent --name x --set -j DROP 2>&1); rc=$?
check "without strict the same commit succeeds and prints nothing" [ "$rc/$out" = "0/" ]
st=$(ip netns exec "$F" "$BPFIPT" status)
check "status shows the IPv4 fallback and why" grep -q "ipv4: enforced by the kernel's ip_tables (fallback): .*recent" <<< "$st"
check "the kernel enforces the fallback ruleset (ping dropped)" sh -c "! ip netns exec $C ping -c 1 -W 1 10.1.0.1 >/dev/null 2>&1"
shim "$F" $IPT -D INPUT -p icmp -m recent --name x --set -j DROP
st=$(ip netns exec "$F" "$BPFIPT" status)
check "removing the rule gives the family back to the datapath" grep -q "ipv4: enforced by the eBPF datapath" <<< "$st"
check "... and the kernel's tables are released (no rules)" sh -c "! ip netns exec $F $SAVE | grep -q '^-A'"
check "ping passes again" pings "$C" 10.1.0.1

# --- a killed daemon leaves the datapath enforcing; its counts survive ----------------------
shim "$F" $IPT -A FORWARD -p icmp -j ACCEPT
shim "$F" $IPT -P FORWARD DROP
ip netns exec "$C" ping -c 3 -i 0.2 -W 1 10.2.0.2 >/dev/null 2>&1
kill -9 $(daemon_pid "$F")
sleep 0.2
check "after SIGKILL of bpfiptd, forwarding still follows the rules (icmp passes)" pings "$C" 10.2.0.2
check "... and the policy still drops tcp" sh -c "! ip netns exec $C timeout 2 bash -c '</dev/tcp/10.2.0.2/80' 2>/dev/null"
n=$(shim "$F" $IPT -L FORWARD -v -x -n | awk '$3 == "ACCEPT" {print $1}')
check "the restarted daemon reports the packets counted before and after the kill ($n >= 8)" [ "${n:-0}" -ge 8 ]
ns_del "$C"; ns_del "$F"; ns_del "$S"; ns_del "$N"

# --- SIGKILL during large commits under traffic ---------------------------------------------
topo3 flt
gen() { # PORTS: 10000 rules that match nothing, then ACCEPT for udp PORTS, policy DROP
    echo '*filter'
    echo ':INPUT ACCEPT [0:0]'
    echo ':FORWARD DROP [0:0]'
    echo ':OUTPUT ACCEPT [0:0]'
    for i in $(seq 1 10000); do
        echo "-A FORWARD -s 172.$(( 16 + i / 250 % 16 )).$(( i % 250 )).0/24 -p tcp --dport $(( 1000 + i % 50000 )) -j ACCEPT"
    done
    echo "-A FORWARD -p udp --dport $1 -j ACCEPT"
    echo "-A FORWARD -p udp --sport $1 -j ACCEPT"
    echo COMMIT
}
gen 1000:1999 > "$tmp/a.rules"
gen 1500:2499 > "$tmp/b.rules"
shim "$F" $RESTORE < "$tmp/a.rules"
ports=1200,1700,2200,3000
ip netns exec "$S" python3 "$UDPFLOW" recv $ports 1000 > "$tmp/recv.out" &
rpid=$!
sleep 0.3
ip netns exec "$C" python3 "$UDPFLOW" send 10.2.0.2 $ports 1000 800 &
spid=$!
for r in $(seq 1 "$rounds"); do
    f=$tmp/a.rules; [ $((r % 2)) = 0 ] && f=$tmp/b.rules
    shim "$F" $RESTORE < "$f" 2>/dev/null &
    bg=$!
    sleep "0.$(printf %03d $(( RANDOM % 200 )))"
    if [ $((RANDOM % 2)) = 0 ]; then
        kill -9 $(daemon_pid "$F") 2>/dev/null
    else
        for p in $(ip netns pids "$F"); do
            case "$(cat /proc/$p/comm 2>/dev/null)" in iptables-legacy*|xtables-legacy*) kill -9 $p ;; esac
        done
    fi
    wait $bg 2>/dev/null
done
sleep 0.5
kill $spid 2>/dev/null; wait $spid 2>/dev/null
kill $rpid 2>/dev/null; wait $rpid 2>/dev/null
during() { awk -v p="$1" '$1 == p {print $2}' "$tmp/recv.out"; }
check "no packet that neither ruleset accepts passed during the kills (port 3000: $(during 3000) of the flow)" [ "$(during 3000)" = 0 ]
check "traffic flowed during the kills (port 1700: $(during 1700))" [ "$(during 1700)" -gt 0 ]
enforced=$(shim "$F" $IPT -S FORWARD | grep -o -- '--dport [0-9:]*' | tail -n 1 | cut -d' ' -f2)
ip netns exec "$S" python3 "$UDPFLOW" recv $ports 2 > "$tmp/probe.out" &
rp=$!
sleep 0.2
ip netns exec "$C" python3 "$UDPFLOW" send 10.2.0.2 $ports 1.2 400
wait $rp
got() { awk -v p="$1" '$1 == p {print $2}' "$tmp/probe.out"; }
case "$enforced" in
    1000:1999) want_a=yes ;;
    1500:2499) want_a=no ;;
    *) want_a=unknown ;;
esac
check "iptables -S after the kills shows a whole ruleset ($enforced)" [ "$want_a" != unknown ]
if [ "$want_a" = yes ]; then
    check "the enforced ruleset is the one shown: 1200 passes (got $(got 1200)), 2200 does not (got $(got 2200))" \
        sh -c "[ $(got 1200) -gt 0 ] && [ $(got 2200) = 0 ]"
else
    check "the enforced ruleset is the one shown: 2200 passes (got $(got 2200)), 1200 does not (got $(got 1200))" \
        sh -c "[ $(got 2200) -gt 0 ] && [ $(got 1200) = 0 ]"
fi
check "port 3000 stays dropped afterwards ($(got 3000))" [ "$(got 3000)" = 0 ]
check "port 1700 (both rulesets) kept flowing in the probe ($(got 1700))" [ "$(got 1700)" -gt 0 ]
e2e_summary
