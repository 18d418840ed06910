#!/bin/bash
# B4 (BENCH.md): new TCP connections per second through FORWARD, and the memory each tracked
# connection costs. One src -- fw -- dst per backend; fw's FORWARD chain:
#     -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
#     -p tcp --syn --dport 80 -j ACCEPT
#     policy DROP                                   (`none`: no rules, nothing tracked)
# `tcpconn rate` in src opens connections to `tcpconn serve` in dst (connect, the server's one
# byte and FIN, close) from 4 threads and 16 source addresses for --seconds: the figure is
# completed connections per second. fw's conntrack table is flushed before each round.
# CPU per connection: the busy time (/proc/stat) of the forwarding CPU (fw's forwarding, and
# the receive side of client and server, which runs where fw transmits) and of all CPUs (the
# client and server threads run on the other) over a round, per completed connection: what a
# connection costs, where conn/s also counts the time both CPUs wait for each other.
# Memory: `tcpconn hold` keeps --hold connections open; the figure is the growth of the
# kernel's nf_conntrack slab (objects x object size, /proc/slabinfo) per entry that fw's
# table gained (`conntrack -C`); the fixed hash table and per-entry extensions (allocated
# only for accounting, timestamps, event listeners, helpers or NAT) are not counted. bpfipt,
# which tracks in eBPF, is measured the same way on its `ct` map (a hash map allocated per
# element): the growth of the map's memory (bpftool's bytes_memlock, the kernel's
# htab_map_mem_usage: element size and its allocator header per element; the buckets are
# fixed, like the kernel's hash table) per entry its table gained (`bpfipt conntrack -C`).
# The row `bpfipt ct elem` is the same element rounded to its kmalloc size class, what the
# slab really gives it. A bpfipt that hands the table to the kernel is labelled
# `bpfipt(kernel fallback)` and measured by the kernel's slab.
# --profile: every rate round also runs `perf record -g -e cpu-clock` on the forwarding CPU
# (where RPS puts all of fw's work), and the table gets fw's firewall CPU time per completed
# connection: the share of that CPU's samples under netfilter's hooks (nf_hook_slow, with
# conntrack and every table below it) for legacy and nft, under bpfipt's programs (with its
# conntrack and classification) for bpfipt, times that CPU's busy time (/proc/stat), per
# connection. It resolves what conn/s cannot: the firewall
# is a few percent of the CPU that the client and server stacks take on the same CPUs. Removing
# entries is in neither (tables are flushed between rounds). Sampling slows that run's conn/s
# alike for every backend; hooks and programs of other namespaces count too, so profile on an
# otherwise quiet machine. Needs perf (Debian: linux-perf).
#   compat-tests/bench/b4.sh [--backends none,legacy,nft,bpfipt] [--rounds 5] [--seconds 3]
#                            [--hold 15000] [--profile] [--quick] [--json F] [--plot F.png]
set -uo pipefail
BENCH=b4 TITLE="B4: connections through conntrack rules (conn/s: higher is better; us and bytes: lower)"
SMOKE_RULES=2 DEFAULT_RULES=2 DEFAULT_BACKENDS=none,legacy,nft,bpfipt DEFAULT_DURATION=3
HOLD=15000 PROFILE=0
extra_opt() {
    case "$1" in
        --hold) HOLD=$2 EXTRA_SHIFT=1 ;;
        --profile) PROFILE=1 EXTRA_SHIFT=0 ;;
        *) return 1 ;;
    esac
}
. "$(dirname "$0")/lib.sh"
bench_init "$@"
[ "$QUICK" = 1 ] && HOLD=$((HOLD < 5000 ? HOLD : 5000))
[ "$SMOKE" = 1 ] && HOLD=200
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null; then
    echo "b4: --profile needs perf (apt-get install linux-perf)" >&2
    exit 2
fi

# BPFIPT_B4_NO_SHORTCUT=1: a rule that never matches first (for every backend), so that bpfipt
# classifies established packets instead of taking its accept-established shortcut.
first=""
[ "${BPFIPT_B4_NO_SHORTCUT:-0}" = 1 ] && first="-A FORWARD -s 203.0.113.7/32 -j DROP"
cat > "$WORK/rules" <<R
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
$first
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -p tcp --syn --dport 80 -j ACCEPT
COMMIT
R

declare -A SRC_OF FW_OF DST_OF LABEL SERVER
live=()

# stop_server B: stops B's server in dst, if one runs.
stop_server() {
    [ -n "${SERVER[$1]:-}" ] || return 0
    kill "${SERVER[$1]}" 2>/dev/null
    wait "${SERVER[$1]}" 2>/dev/null
    SERVER[$1]=""
}

# server B [--hold]: (re)starts B's server in dst.
server() {
    local b="$1"; shift
    stop_server "$b"
    # nsenter, not in_ns: a function in the background would be a subshell, and $! its pid.
    nsenter --net="/run/netns/${DST_OF[$b]}" taskset -c "$SEND_CPU" "$BIN/tcpconn" serve \
        --addr 198.51.100.1 --port 80 --threads 2 "$@" &
    SERVER[$b]=$!
    sleep 0.2
}

# rate B SECONDS [PORT [PERF_FILE]]: prints "conns fails seconds"; with PERF_FILE, under a
# perf record of the forwarding CPU written there (in_ns written out: perf runs a program, not a
# shell function).
rate() {
    local pre=()
    [ -n "${4:-}" ] && pre=(perf record -q -C "$FWD_CPU" -g -e cpu-clock -F 4999 -o "$4" --)
    "${pre[@]}" nsenter --net="/run/netns/${SRC_OF[$1]}" taskset -c "$SEND_CPU" "$BIN/tcpconn" \
        rate --dst 198.51.100.1 --port "${3:-80}" --src 192.0.2.1 --srcs 16 --threads 4 \
        --seconds "$2" | awk '{print $2, $4, $6}'
}

# fw_share PERF_FILE: the share of the sampled CPU time spent under the firewall's entry points
# (their "children" share). cpu-clock samples only busy time, and fewer than asked when the
# kernel lowers perf's sample rate, so the share is scaled by the busy time of /proc/stat.
fw_share() {
    perf report -i "$1" --children --sort sym -g none --stdio 2>/dev/null | "$PY" -c '
import re, sys
share, seen = 0.0, False
for line in sys.stdin:
    if line.startswith("# Samples:"):
        seen = True
    m = re.match(r"\s*([\d.]+)%\s+[\d.]+%\s+\[k\] (\S+)\s*$", line)
    if m and re.fullmatch(r"nf_hook_slow|bpf_prog_[0-9a-f]+_bpfipt_\w+", m.group(2)):
        share += float(m.group(1)) / 100
if not seen:
    sys.exit(1)
print(share)
'
}

# flush_ct B: empties fw's table: the kernel's, and bpfipt's own when it tracks in eBPF.
flush_ct() {
    [ "$1" = none ] && return
    in_ns "${FW_OF[$1]}" conntrack -F >/dev/null 2>&1
    [[ "$1" == bpfipt* ]] && in_ns "${FW_OF[$1]}" "$BPFIPT" conntrack -F >/dev/null 2>&1
    return 0
}
ct_count() { in_ns "${FW_OF[$1]}" conntrack -C 2>/dev/null || echo 0; }
ct_slab() { awk '$1 == "nf_conntrack" {print $3 * $4}' /proc/slabinfo; }

# bpf_ct_mem B: bytes_memlock of the `ct` map of B's daemon (fails when it has none). The
# daemon's maps are found by the map ids of its descriptors (fdinfo): bpftool lists no pids
# on this kernel.
bpf_ct_mem() {
    local pid
    pid=$(daemon_pid "${FW_OF[$1]}")
    [ -n "$pid" ] || return 1
    bpftool -j map show 2>/dev/null | "$PY" -c '
import glob, json, sys
ids = set()
for f in glob.glob("/proc/%s/fdinfo/*" % sys.argv[1]):
    try:
        for line in open(f):
            if line.startswith("map_id:"):
                ids.add(int(line.split()[1]))
    except OSError:
        pass
maps = [m for m in json.load(sys.stdin) if m.get("name") == "ct" and m["id"] in ids]
if len(maps) != 1:
    sys.exit(1)
print(maps[0]["bytes_memlock"])
' "$pid"
}
bpf_ct_count() { in_ns "${FW_OF[$1]}" "$BPFIPT" conntrack -C 2>/dev/null || echo 0; }
# kmalloc_class N: the kmalloc size class an allocation of N bytes gets.
kmalloc_class() {
    local c
    for c in 8 16 32 64 96 128 192 256 512 1024 2048 4096; do
        [ "$1" -le "$c" ] && { echo "$c"; return; }
    done
    echo "$1"
}

for b in "${BACKENDS[@]}"; do
    backend_ready "$b" || continue
    progress "namespaces and rules for $b"
    topo_fwd "$b"
    SRC_OF[$b]=$SRC FW_OF[$b]=$FW DST_OF[$b]=$DST
    # Client ports from the whole range: the rate test opens tens of thousands.
    in_ns "$SRC" sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
    if [ "$b" != none ] && ! restore "$b" "$FW" < "$WORK/rules"; then
        note "$b: skipped, iptables-restore failed"
        continue
    fi
    LABEL[$b]=$(label "$b" "$FW")
    server "$b"
    read -r ok fails _ < <(rate "$b" 0.5)
    if [ "${ok:-0}" = 0 ]; then
        note "$b: skipped, no connection went through ($fails failed)"
        continue
    fi
    if [ "$b" != none ]; then
        read -r ok _ < <(rate "$b" 1 81)
        [ "${ok:-1}" = 0 ] || note "$b: $ok connections to port 81 went through a chain that drops them"
    fi
    live+=("$b")
done

for r in $(seq 1 "$ROUNDS"); do
    for b in "${live[@]}"; do
        progress "connection rate, round $r/$ROUNDS: ${LABEL[$b]}"
        flush_ct "$b"
        pf=""
        [ "$PROFILE" = 1 ] && [ "$b" != none ] && pf="$WORK/perf.$b.$r"
        f0=$(cpu_busy "$FWD_CPU") a0=$(cpu_busy)
        read -r ok fails secs < <(rate "$b" "$DURATION" 80 "$pf")
        f1=$(cpu_busy "$FWD_CPU") a1=$(cpu_busy)
        [ -n "${ok:-}" ] && [ "$ok" -gt 0 ] || continue
        sample "new conn/s" "${LABEL[$b]}" 2 "$("$PY" -c "print($ok / $secs)")"
        sample "us of fw's CPU per conn" "${LABEL[$b]}" 2 \
            "$("$PY" -c "print(($f1 - $f0) * $TICK_NS / 1e3 / $ok)")"
        sample "us of all CPUs per conn" "${LABEL[$b]}" 2 \
            "$("$PY" -c "print(($a1 - $a0) * $TICK_NS / 1e3 / $ok)")"
        if [ -n "$pf" ]; then
            if share=$(fw_share "$pf"); then
                sample "fw firewall us/conn" "${LABEL[$b]}" 2 \
                    "$("$PY" -c "print($share * ($f1 - $f0) * $TICK_NS / 1e3 / $ok)")"
            else
                note "${LABEL[$b]} round $r: no profile ($pf)"
            fi
            rm -f "$pf"
        fi
        [ "$fails" -le $((ok / 100)) ] ||
            note "${LABEL[$b]} round $r: $fails connections failed ($ok completed)"
    done
done

for r in $(seq 1 "$ROUNDS"); do
    for b in "${live[@]}"; do
        [ "$b" = none ] && continue
        progress "memory, round $r/$ROUNDS: ${LABEL[$b]} holding $HOLD connections"
        server "$b" --hold
        flush_ct "$b"
        native=0
        [ "${LABEL[$b]}" = "$b" ] && [[ "$b" == bpfipt* ]] && native=1
        if [ $native = 1 ]; then
            c0=$(bpf_ct_count "$b") s0=$(bpf_ct_mem "$b" || echo -1)
        else
            c0=$(ct_count "$b") s0=$(ct_slab)
        fi
        out="$WORK/hold.$b"
        : > "$out"
        nsenter --net="/run/netns/${SRC_OF[$b]}" "$BIN/tcpconn" hold --dst 198.51.100.1 --port 80 --src 192.0.2.1 \
            --srcs 16 --count "$HOLD" > "$out" &
        client=$!
        for _ in $(seq 1 600); do grep -q '^held' "$out" && break; sleep 0.1; done
        sleep 0.2 # the last handshakes' ACKs reach fw
        if [ $native = 1 ]; then
            c1=$(bpf_ct_count "$b") s1=$(bpf_ct_mem "$b" || echo -1)
        else
            c1=$(ct_count "$b") s1=$(ct_slab)
        fi
        if [ "$s0" = -1 ] || [ "$s1" = -1 ]; then
            note "$b: enforced natively but its daemon has no map named ct: memory not measured"
        elif [ "$c1" -gt "$c0" ]; then
            per=$("$PY" -c "print(($s1 - $s0) / ($c1 - $c0))")
            sample "bytes per tracked conn" "${LABEL[$b]}" 2 "$per"
            # The element in its kmalloc class (the accounting counts its exact size).
            [ $native = 1 ] && sample "bytes per tracked conn" "bpfipt ct elem" 2 \
                "$(kmalloc_class "$("$PY" -c "print(round($per))")")"
        else
            note "${LABEL[$b]} round $r: fw's conntrack table did not grow ($c0 -> $c1)"
        fi
        grep -q "^held $HOLD " "$out" || note "${LABEL[$b]} round $r: $(cat "$out")"
        kill "$client" 2>/dev/null; wait "$client" 2>/dev/null
    done
done
for b in "${BACKENDS[@]}"; do
    stop_server "$b"
done
bench_report
