#!/bin/bash
# End-to-end tests of the control plane's robustness: concurrency, SIGKILL of any bpfipt
# process during a large commit, unprivileged callers, and the daemon's lifetime.
#   compat-tests/daemon.sh [--rounds N]   (N kill rounds per process kind, default 10)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init
rounds=10
[ "${1:-}" = "--rounds" ] && rounds=$2

IPT=/usr/sbin/iptables-legacy
SAVE=/usr/sbin/iptables-legacy-save
RESTORE=/usr/sbin/iptables-legacy-restore
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; e2e_cleanup' EXIT

daemon_pid() { # NS: pid of the namespace's bpfiptd, if any
    local p
    for p in $(ip netns pids "$1" 2>/dev/null); do
        [ "$(cat /proc/$p/comm 2>/dev/null)" = bpfiptd ] && echo "$p"
    done
}

# --- 50 parallel appends with -w ---------------------------------------------------------
ns=$(ns_new par)
for i in $(seq 1 50); do
    shim "$ns" $IPT -w -A INPUT -s 10.1.0.$i -j ACCEPT &
done
wait
n=$(shim "$ns" $SAVE | grep -c '^-A INPUT -s 10.1.0.')
check "50 parallel 'iptables -w -A' leave 50 rules (got $n)" [ "$n" = 50 ]
d=$(daemon_pid "$ns" | wc -l)
check "one daemon serves the namespace (found $d)" [ "$d" = 1 ]
ns_del "$ns"

# --- SIGKILL during a 10000-rule restore ---------------------------------------------------
gen() { # N PREFIX
    echo '*filter'
    echo ':INPUT ACCEPT [0:0]'
    echo ':FORWARD ACCEPT [0:0]'
    echo ':OUTPUT ACCEPT [0:0]'
    for i in $(seq 1 "$1"); do
        echo "-A FORWARD -s 10.$(( i / 250 % 250 )).$(( i % 250 )).0/24 -p tcp --dport $(( 1000 + i % 50000 )) -j $2"
    done
    echo COMMIT
}
gen 100 DROP > "$tmp/old.rules"
gen 10000 ACCEPT > "$tmp/new.rules"
ns=$(ns_new kill)
shim "$ns" $RESTORE < "$tmp/new.rules"
shim "$ns" $SAVE | nodates > "$tmp/new.save"
shim "$ns" $RESTORE < "$tmp/old.rules"
shim "$ns" $SAVE | nodates > "$tmp/old.save"
check "new ruleset saves 10000 rules" [ "$(grep -c '^-A' "$tmp/new.save")" = 10000 ]

kills_ok=0
kills=0
old_left=0
for victim in iptables-restore bpfiptd; do
    for r in $(seq 1 "$rounds"); do
        shim "$ns" $RESTORE < "$tmp/old.rules" 2>/dev/null
        shim "$ns" $RESTORE < "$tmp/new.rules" 2>/dev/null &
        bg=$!
        # A 10000-rule restore takes about 0.1 s here: land most kills inside it.
        sleep "0.$(printf %03d $(( RANDOM % 150 )))"
        if [ $victim = bpfiptd ]; then
            p=$(daemon_pid "$ns")
            [ -n "$p" ] && kill -9 $p
        else
            for p in $(ip netns pids "$ns"); do
                [ "$(cat /proc/$p/comm 2>/dev/null)" = iptables-legacy ] || [ "$(cat /proc/$p/comm 2>/dev/null)" = xtables-legacy- ] && kill -9 $p
            done
        fi
        wait $bg 2>/dev/null
        kills=$((kills + 1))
        shim "$ns" $SAVE 2>"$tmp/err" | nodates > "$tmp/now.save"
        if cmp -s "$tmp/now.save" "$tmp/old.save"; then
            kills_ok=$((kills_ok + 1))
            old_left=$((old_left + 1))
        elif cmp -s "$tmp/now.save" "$tmp/new.save"; then
            kills_ok=$((kills_ok + 1))
        else
            fail "after SIGKILL of $victim (round $r): table is neither old nor new ($(grep -c '^-A' "$tmp/now.save") rules; $(head -c 200 "$tmp/err"))"
        fi
    done
done
check "SIGKILL of iptables-restore or bpfiptd mid-commit leaves old or new table ($kills_ok of $kills; old $old_left times)" [ $kills_ok = $kills ]
shim "$ns" $IPT -A INPUT -j ACCEPT
check "the next command works after the kills" [ $? = 0 ]
ns_del "$ns"

# --- unprivileged callers get the kernel's answers ------------------------------------------
k=$(ns_new unpriv-k)
s=$(ns_new unpriv-s)
for cmd in "$IPT -L" "$IPT -A FORWARD -p tcp --dport 123" "$SAVE"; do
    ko=$(kern "$k" runuser -u nobody -- $cmd 2>&1); krc=$?
    so=$(shim "$s" runuser -u nobody -- $cmd 2>&1); src=$?
    check "as nobody: '$cmd' gives the kernel's status $krc and output" [ "$krc/$ko" = "$src/$so" ]
done
ns_del "$k"
ns_del "$s"

# --- an empty INPUT's policy is counted with and without a daemon ---------------------------
# The LOCAL_IN hook counts it while the daemon runs (the ingress program is off);
# `bpfipt daemon stop` first hands the count back to the TC programs, which outlive the daemon.
topo3 cnt
shim "$F" $IPT -A FORWARD -p tcp -j DROP
ip netns exec "$C" ping -c 3 -i 0.2 -W 1 10.1.0.1 >/dev/null
p=$(daemon_pid "$F")
ip netns exec "$F" "$BPFIPT" daemon stop >/dev/null 2>&1
for _ in $(seq 1 50); do [ -d /proc/$p ] || break; sleep 0.1; done
check "bpfipt daemon stop ends the daemon" [ ! -d /proc/$p ]
ip netns exec "$C" ping -c 4 -i 0.2 -W 1 10.1.0.1 >/dev/null
n=$(shim "$F" $IPT -L INPUT -v -x -n | awk 'NR == 1 {print $5 "/" $7}')
check "INPUT's policy counted 3 pings with the daemon and 4 after it stopped (got $n)" \
    [ "$n" = 7/588 ]
ns_del "$C"; ns_del "$F"; ns_del "$S"

# --- the daemon does not keep a deleted namespace alive --------------------------------------
ns=$(ns_new life)
shim "$ns" $IPT -A INPUT -j ACCEPT
p=$(daemon_pid "$ns")
check "a daemon started for the namespace" [ -n "$p" ]
ip netns del "$ns"
for _ in $(seq 1 50); do [ -d /proc/$p ] || break; sleep 0.1; done
check "the daemon exits once 'ip netns del' released the namespace" [ ! -d /proc/$p ]
unshare -n bash -c "LD_PRELOAD=$SHIM $IPT -A INPUT -j ACCEPT; echo \$\$ > $tmp/unshare.pid; pgrep -n -x bpfiptd > $tmp/d.pid"
p=$(cat "$tmp/d.pid")
for _ in $(seq 1 50); do [ -d /proc/$p ] || break; sleep 0.1; done
check "the daemon of an 'unshare -n' namespace exits after the last process" [ ! -d /proc/$p ]

e2e_summary
