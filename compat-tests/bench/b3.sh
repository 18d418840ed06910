#!/bin/bash
# B3 (BENCH.md): rule update latency. In one namespace per backend, a FORWARD chain of N
# ClassBench-like rules (translator::gen); each round, per backend in turn: wall time of
# `iptables-restore` of the whole table (the N rules, replacing the same N), then of one
# `iptables -A`, `iptables -I FORWARD 1` and `iptables -D` (of the appended rule, found by
# its specification at the chain's end). Times are taken in the namespace around the
# command's own process (fork, exec and exit included; the namespace switch is not).
#   compat-tests/bench/b3.sh [--rules 0,1000,10000] [--backends legacy,nft,bpfipt]
#                            [--rounds 5] [--quick] [--json F] [--plot F.png]
set -uo pipefail
BENCH=b3 TITLE="B3: rule update latency, ms of wall time (lower is better)"
SMOKE_RULES=0,100 DEFAULT_RULES=0,1000,10000 DEFAULT_BACKENDS=legacy,nft,bpfipt DEFAULT_DURATION=1
. "$(dirname "$0")/lib.sh"
bench_init "$@"

X=(-s 203.0.113.1/32 -d 198.51.100.7/32 -p tcp -m tcp --dport 443 -j ACCEPT)
Y=(-s 203.0.113.2/32 -d 198.51.100.7/32 -p tcp -m tcp --dport 443 -j ACCEPT)

# timed B NS INPUT CMD ARGS...: runs B's CMD (iptables or iptables-restore) with stdin from
# INPUT; prints the milliseconds it took, or fails with its stderr.
timed() {
    local b="$1" ns="$2" input="$3" cmd="$4"; shift 4
    local out
    out=$(in_ns "$ns" bash -c '
        pre=$1 in=$2; shift 2
        [ -n "$pre" ] && export LD_PRELOAD=$pre
        s=$EPOCHREALTIME; "$@" < "$in" > /dev/null; rc=$?; e=$EPOCHREALTIME
        echo "$s $e $rc"' _ "$(backend_env "$b" | sed -n 's/^LD_PRELOAD=//p')" "$input" \
        "$(backend_tool "$b" "$cmd")" "$@" 2>"$WORK/err") || true
    read -r s e rc <<< "$out"
    if [ "${rc:-1}" != 0 ]; then
        note "$b: $cmd $* failed: $(head -1 "$WORK/err")"
        return 1
    fi
    "$PY" -c "print(f'{($e - $s) * 1000:.3f}')"
}

declare -A NS_OF
live=()
for b in "${BACKENDS[@]}"; do
    [ "$b" = none ] && { note "none: no rules to update, not measured"; continue; }
    backend_ready "$b" || continue
    bench_ns ns "$b"
    NS_OF[$b]=$ns
    live+=("$b")
done

for n in "${RULES[@]}"; do
    file=$(gen_rules "$n" --chain FORWARD --policy ACCEPT --no-flow)
    declare -A LABEL=()
    for b in "${live[@]}"; do
        progress "N=$n: first load of $b"
        restore "$b" "${NS_OF[$b]}" < "$file" || note "$b: the first load of $n rules failed"
        LABEL[$b]=$(label "$b" "${NS_OF[$b]}")
    done
    for r in $(seq 1 "$ROUNDS"); do
        for b in "${live[@]}"; do
            progress "N=$n round $r/$ROUNDS: $b"
            ns=${NS_OF[$b]} l=${LABEL[$b]}
            t=$(timed "$b" "$ns" "$file" iptables-restore) && sample "ms, restore" "$l" "$n" "$t"
            t=$(timed "$b" "$ns" /dev/null iptables -A FORWARD "${X[@]}") && sample "ms, -A" "$l" "$n" "$t"
            t=$(timed "$b" "$ns" /dev/null iptables -I FORWARD 1 "${Y[@]}") && sample "ms, -I 1" "$l" "$n" "$t"
            t=$(timed "$b" "$ns" /dev/null iptables -D FORWARD "${X[@]}") && sample "ms, -D" "$l" "$n" "$t"
        done
    done
    # The chain holds what the commands made of it: N rules and the inserted one.
    for b in "${live[@]}"; do
        got=$(ipt "$b" "${NS_OF[$b]}" -S FORWARD | grep -c '^-A')
        [ "$got" = $((n + 1)) ] || note "$b at $n rules: FORWARD holds $got rules, not $((n + 1))"
    done
done
bench_report
