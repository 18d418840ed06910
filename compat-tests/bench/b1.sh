#!/bin/bash
# B1 (BENCH.md): forwarding throughput against the number of rules.
#   compat-tests/bench/b1.sh [--rules 0,100,1000,5000,10000,50000] [--backends LIST]
#                            [--rounds 5] [--seconds 3] [--quick] [--json F] [--plot F.png]
# One src -- fw -- dst per backend. fw's FORWARD chain holds N ClassBench-like rules that
# never match the flow (the `gen` example of translator::gen), then one ACCEPT for it; policy
# DROP. udpblast sends 60-byte UDP frames from 192.0.2.1 (8192 source ports) to
# 198.51.100.1:9 from CPU 0 for --seconds; fw forwards on the other CPU (RPS); the figure is
# packets per second received on dst's interface (its counters; dst drops them at ingress).
# Second figure: ns of the forwarding CPU's busy time (/proc/stat) per packet received, which
# shows fw's cost also where the rate is the sender's (at few rules the forwarding CPU is not
# saturated); it includes dst's ingress drop, which runs on that CPU as well (and, on a machine
# of one CPU, the sender).
# tc-empty (not measured unless asked for) is none with a program that only returns
# TC_ACT_OK at fw's TC hooks: what any TC datapath costs before its first instruction.
# bpfipt-xdp is bpfipt with `bpfipt xdp native` (BPFIPT_XDP_MODE=generic for generic mode):
# dst's s0 gets an XDP program that passes everything (a veth takes native redirects only
# then) and fw's f0 threaded NAPI pinned to the forwarding CPU (native XDP on a veth runs in
# the sending CPU's NAPI otherwise). Backends are measured interleaved at each N. A load
# taking longer than --load-timeout seconds (default 600) skips that backend at that N, with
# a note.
set -uo pipefail
BENCH=b1 TITLE="B1: forwarding throughput, kpps received on dst (higher is better)"
SMOKE_RULES=0,100 DEFAULT_RULES=0,100,1000,5000,10000,50000 DEFAULT_BACKENDS=none,legacy,nft,bpfipt,bpfipt-xdp
DEFAULT_DURATION=3
LOAD_TIMEOUT=600
extra_opt() { [ "$1" = --load-timeout ] && LOAD_TIMEOUT=$2 EXTRA_SHIFT=1; }
. "$(dirname "$0")/lib.sh"
bench_init "$@"

declare -A SRC_OF FW_OF DST_OF C0MAC_OF F0MAC_OF
live=()
for b in "${BACKENDS[@]}"; do
    backend_ready "$b" || continue
    progress "namespaces for $b"
    topo_fwd "$b"
    SRC_OF[$b]=$SRC FW_OF[$b]=$FW DST_OF[$b]=$DST C0MAC_OF[$b]=$C0MAC F0MAC_OF[$b]=$F0MAC
    # dst drops at its ingress, so its own stack costs fw's CPU as little as possible.
    in_ns "$DST" nft -f - <<< "table netdev sink { chain c { type filter hook ingress device s0 priority 0; policy drop; }; }"
    xdp_peer "$b" "$DST" s0 || note "$b: no XDP program on dst's s0"
    live+=("$b")
done

# blast B SECONDS DPORT [udpblast options]: sends; prints "packets seconds busy" received on
# dst, with busy the forwarding CPU's ticks meanwhile.
blast() {
    local b="$1" secs="$2" dport="$3"; shift 3
    local a z out c0 c1
    a=$(rx_packets "${DST_OF[$b]}" s0)
    c0=$(cpu_busy "$FWD_CPU")
    out=$(in_ns "${SRC_OF[$b]}" taskset -c "$SEND_CPU" "$BIN/udpblast" --dev c0 \
        --src-mac "${C0MAC_OF[$b]}" --dst-mac "${F0MAC_OF[$b]}" --src 192.0.2.1 \
        --dst 198.51.100.1 --dport "$dport" --sports 1024-9215 --seconds "$secs" "$@") || return 1
    sleep 0.05 # the last frames leave fw's backlog
    c1=$(cpu_busy "$FWD_CPU")
    z=$(rx_packets "${DST_OF[$b]}" s0)
    echo "$((z - a)) $(awk '{print $4}' <<< "$out") $((c1 - c0))"
}

for n in "${RULES[@]}"; do
    file=$(gen_rules "$n" --chain FORWARD --policy DROP)
    measured=()
    declare -A LABEL=()
    for b in "${live[@]}"; do
        progress "N=$n: loading $b"
        t=$EPOCHREALTIME
        if [ "$b" != none ]; then
            timeout "$LOAD_TIMEOUT" bash -c "$(declare -f in_ns restore backend_env backend_tool); SHIM=$SHIM PY=$PY BENCH_DIR=$BENCH_DIR; restore $b ${FW_OF[$b]}" < "$file"
            rc=$?
            if [ $rc != 0 ]; then
                [ $rc = 124 ] && note "$b at $n rules: skipped, loading took more than $LOAD_TIMEOUT s" ||
                    note "$b at $n rules: skipped, iptables-restore failed (status $rc)"
                continue
            fi
        fi
        secs=$("$PY" -c "print(f'{$EPOCHREALTIME - $t:.1f}')")
        xdp_on "$b" "${FW_OF[$b]}" || note "$b at $n rules: bpfipt xdp failed"
        xdp_napi "$b" "${FW_OF[$b]}" f0 || note "$b: threaded NAPI of f0 not pinned"
        LABEL[$b]=$(label "$b" "${FW_OF[$b]}")
        # The rules must hold: a port the chain does not accept never reaches dst.
        read -r got _ < <(blast "$b" 1 10 --count 2000)
        if [ "$b" != none ] && [ "$b" != tc-empty ] && [ "${got:-1}" != 0 ]; then
            note "$b at $n rules: $got of 2000 packets to a dropped port reached dst"
        fi
        blast "$b" 0.3 9 >/dev/null # warm-up
        progress "N=$n: $b loaded in ${secs}s"
        measured+=("$b")
    done
    for r in $(seq 1 "$ROUNDS"); do
        for b in "${measured[@]}"; do
            progress "N=$n round $r/$ROUNDS: $b"
            read -r got secs busy < <(blast "$b" "$DURATION" 9)
            [ -n "${got:-}" ] || continue
            sample kpps "${LABEL[$b]}" "$n" "$("$PY" -c "print($got / $secs / 1000)")"
            [ "$got" -gt 0 ] &&
                sample "ns of fw's CPU per packet" "${LABEL[$b]}" "$n" "$((busy * TICK_NS / got))"
        done
    done
done
bench_report
