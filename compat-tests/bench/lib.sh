# Shared by the benchmark commands compat-tests/bench/b1.sh .. b4.sh (see BENCH.md): options,
# namespaces that are always removed, the backends, samples, progress, and the report
# (report.py: table, --json, --plot). A command sets BENCH, TITLE, DEFAULT_RULES,
# DEFAULT_BACKENDS and DEFAULT_DURATION, sources this file, then calls `bench_init "$@"`.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$BENCH_DIR/../lib.sh"
E2E_PREFIX="bb$$-$BENCH"
BIN="$REL"
GEN="$BIN/examples/gen"
ALL_BACKENDS="none tc-empty legacy nft bpfipt bpfipt-xdp"
# Debian's python3 (python3-matplotlib, from scripts/install-deps.sh), not one a PATH may put first.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

bench_usage() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
    cat <<EOF
Common options:
  --rounds N       interleaved rounds (default 5, at least 5 for reported figures)
  --rules LIST     rule counts, comma-separated (default $DEFAULT_RULES)
  --backends LIST  of: ${ALL_BACKENDS// /, } (default $DEFAULT_BACKENDS)
  --seconds S      length of one measurement (default $DEFAULT_DURATION)
  --quick          3 rounds, shorter measurements (a first look, not for reporting)
  --smoke          1 round, tiny sizes: only that the benchmark still runs (run-all.sh);
                   fails when a backend gave no sample
  --json FILE      also write the table as JSON
  --plot FILE.png  also plot median against rule count, one line per backend
EOF
}

bench_init() {
    ROUNDS=5 RULES=$DEFAULT_RULES BACKENDS=$DEFAULT_BACKENDS DURATION=$DEFAULT_DURATION
    JSON="" PLOT="" QUICK=0 SMOKE=0 BENCH_ARGS="$*"
    while [ $# -gt 0 ]; do
        case "$1" in
            --rounds) ROUNDS=$2; shift ;;
            --rules) RULES=$2; shift ;;
            --backends) BACKENDS=$2; shift ;;
            --seconds) DURATION=$2; shift ;;
            --quick) QUICK=1 ;;
            --smoke) SMOKE=1 ;;
            --json) JSON=$(realpath -m "$2"); shift ;;
            --plot) PLOT=$(realpath -m "$2"); shift ;;
            -h|--help) bench_usage; exit 0 ;;
            *)  # a command's own options: extra_opt OPT VALUE sets EXTRA_SHIFT (0 or 1)
                if declare -F extra_opt >/dev/null && extra_opt "$1" "${2:-}"; then
                    shift "$EXTRA_SHIFT"
                else
                    echo "$0: unknown option $1 (--help)" >&2; exit 2
                fi ;;
        esac
        shift
    done
    if [ "$QUICK" = 1 ]; then
        ROUNDS=3
        DURATION=$("$PY" -c "print(min($DURATION, 1))")
    fi
    if [ "$SMOKE" = 1 ]; then
        ROUNDS=1 RULES=$SMOKE_RULES
        DURATION=$("$PY" -c "print(min($DURATION, 0.3))")
    fi
    RULES=(${RULES//,/ })
    BACKENDS=(${BACKENDS//,/ })
    local b
    for b in "${BACKENDS[@]}"; do
        [[ " $ALL_BACKENDS " == *" $b "* ]] || { echo "$0: unknown backend $b" >&2; exit 2; }
    done
    [ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 77; }
    if [ ! -x "$GEN" ] || [ ! -x "$BIN/udpblast" ] || [ ! -f "$SHIM" ]; then
        (cd "$ROOT" && cargo build --release --workspace --bins --lib &&
            cargo build --release -p bpfipt-translator --example gen) >&2 || exit 1
    fi
    # A missing shim would make "bpfipt" silently measure the kernel (ld.so ignores it).
    local f
    for f in "$GEN" "$BIN/udpblast" "$SHIM" "$BPFIPT_DAEMON"; do
        [ -e "$f" ] || { echo "$0: $f is missing after the build" >&2; exit 1; }
    done
    WORK=$(mktemp -d /tmp/bpfipt-bench.XXXXXX)
    SAMPLES="$WORK/samples.tsv" NOTES="$WORK/notes.txt"
    : > "$SAMPLES"; : > "$NOTES"
    # A private xtables lock: other users of the machine's /run/xtables.lock must not add
    # their waits to our timings.
    export XTABLES_LOCKFILE="$WORK/xtables.lock"
    T0=$EPOCHREALTIME
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    NCPU=$(nproc)
    # The traffic source runs on CPU 0; forwarding (RPS of fw's interfaces) on the last CPU.
    SEND_CPU=0 FWD_CPU=$((NCPU - 1))
}

bench_cleanup() {
    [ -t 2 ] && printf '\r\033[K' >&2
    e2e_cleanup
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# progress TEXT: one status line (rewritten in place on a terminal).
progress() {
    local t
    t=$("$PY" -c "print(f'{$EPOCHREALTIME - $T0:6.0f}')")
    if [ -t 2 ]; then printf '\r\033[K[%s %ss] %s' "$BENCH" "$t" "$*" >&2
    else printf '[%s %ss] %s\n' "$BENCH" "$t" "$*" >&2; fi
}

# sample METRIC BACKEND RULES VALUE
sample() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$SAMPLES"; }
note() { echo "$*" >> "$NOTES"; }

# cpu_busy [N]: CPU N's busy time so far (all CPUs' without N), in USER_HZ ticks (/proc/stat:
# user, nice, system, irq, softirq; not idle, iowait, nor steal, the hypervisor's).
cpu_busy() { awk -v c="cpu${1:-}" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
TICK_NS=$((1000000000 / $(getconf CLK_TCK)))

# in_ns NS CMD...: CMD in NS's network namespace only (setns, no /sys remount: cheap).
in_ns() {
    local ns="$1"; shift
    nsenter --net="/run/netns/$ns" "$@"
}

# backend_ready B: whether this checkout can run backend B (notes why not).
backend_ready() {
    case "$1" in
        bpfipt-xdp)
            # bpfipt with the XDP option (`bpfipt xdp $BPFIPT_XDP_MODE`, default native):
            # accepted forwarded packets are redirected at XDP (BENCH.md B1). Switched on by
            # xdp_on after the first restore.
            return 0 ;;
    esac
    return 0
}

# The XDP mode of backend bpfipt-xdp: native (the paper's fast path; on veth it needs an XDP
# program on the receiving peer, see xdp_peer), or generic with BPFIPT_XDP_MODE=generic.
XDP_MODE=${BPFIPT_XDP_MODE:-native}

# xdp_on B NS: turns the XDP option on in NS for backend bpfipt-xdp (nothing for others).
xdp_on() {
    [ "$1" = bpfipt-xdp ] || return 0
    in_ns "$2" "$BPFIPT" xdp "$XDP_MODE" >/dev/null
}

# xdp_peer B NS DEV: for bpfipt-xdp in native mode, an XDP program that passes everything on
# DEV in NS, the veth end that receives fw's native redirects: veth_xdp_xmit drops frames
# unless the receiving end has XDP (or GRO) on, and bpfipt then leaves them to the stack.
xdp_peer() {
    [ "$1" = bpfipt-xdp ] && [ "$XDP_MODE" = native ] || return 0
    if [ ! -f "$WORK/xdp_pass.o" ]; then
        printf '%s\n' '#include <linux/bpf.h>' \
            '__attribute__((section("xdp"), used)) int xdp_pass(struct xdp_md *c) { return XDP_PASS; }' \
            'char _license[] __attribute__((section("license"), used)) = "GPL";' > "$WORK/xdp_pass.c"
        clang-19 -O2 -target bpf -I/usr/include/x86_64-linux-gnu -c "$WORK/xdp_pass.c" \
            -o "$WORK/xdp_pass.o" || return 1
    fi
    ip -n "$2" link set dev "$3" xdpdrv obj "$WORK/xdp_pass.o" sec xdp
}

# xdp_napi B NS DEV: for bpfipt-xdp in native mode, DEV's receive work on FWD_CPU. Native XDP
# on a veth runs in the veth's NAPI, scheduled on the CPU that transmitted (the sender's),
# before RPS could move it: threaded NAPI pinned to FWD_CPU keeps the split of the other
# backends (sender on SEND_CPU, fw on FWD_CPU).
xdp_napi() {
    [ "$1" = bpfipt-xdp ] && [ "$XDP_MODE" = native ] && [ "$NCPU" -gt 1 ] || return 0
    local before p
    # Only the threads this makes (another namespace may have a DEV of the same name).
    before=" $(pgrep -f "^napi/$3-" | tr '\n' ' ') "
    ip netns exec "$2" sh -c "echo 1 > /sys/class/net/$3/threaded" || return 1
    for p in $(pgrep -f "^napi/$3-"); do
        [[ "$before" == *" $p "* ]] && continue
        taskset -pc "$FWD_CPU" "$p" >/dev/null || return 1
    done
}

# backend_env B: the environment of B's iptables commands.
backend_env() {
    case "$1" in
        bpfipt) echo "LD_PRELOAD=$SHIM" ;;
        bpfipt-xdp) echo "LD_PRELOAD=$SHIM" ;;
    esac
}

# backend_tool B NAME: the binary of B for NAME (iptables, iptables-restore).
backend_tool() {
    case "$1" in
        nft) echo "/usr/sbin/$2" | sed 's/iptables/iptables-nft/' ;;
        *) echo "/usr/sbin/$2" | sed 's/iptables/iptables-legacy/' ;;
    esac
}

# restore B NS < FILE: loads FILE with B's iptables-restore (none: nothing; tc-empty: no
# rules, a program that only returns TC_ACT_OK at both TC hooks of every interface but lo,
# where bpfipt attaches its programs: the floor of any TC datapath).
restore() {
    [ "$1" = none ] && { cat >/dev/null; return 0; }
    [ "$1" = tc-empty ] && { cat >/dev/null; in_ns "$2" "$PY" "$BENCH_DIR/tc_empty.py"; return; }
    in_ns "$2" env $(backend_env "$1") "$(backend_tool "$1" iptables-restore)"
}

# ipt B NS ARGS...: B's iptables.
ipt() {
    local b="$1" ns="$2"; shift 2
    in_ns "$ns" env $(backend_env "$b") "$(backend_tool "$b" iptables)" "$@"
}

# label B NS: B, or `B(kernel fallback)` when bpfipt hands IPv4 to the kernel's ip_tables.
label() {
    case "$1" in
        bpfipt*)
            if in_ns "$2" "$BPFIPT" status 2>/dev/null | grep -q "^ipv4: enforced by the kernel"; then
                echo "$1(kernel fallback)"; return
            fi ;;
    esac
    echo "$1"
}

# gen_rules N [gen options]: a ClassBench-like restore file of N rules (cached in WORK).
gen_rules() {
    local n="$1"; shift
    local f="$WORK/rules-$n-${*// /_}.txt"
    [ -f "$f" ] || "$GEN" --seed 1 --rules "$n" "$@" > "$f"
    echo "$f"
}

mac_of() { # NS DEV
    ip -n "$1" -j link show "$2" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])'
}

rx_packets() { # NS DEV
    ip -n "$1" -j -s link show "$2" |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'
}

# bench_ns VAR NAME: makes namespace NAME (removed at exit) and sets VAR to its full name.
# Not VAR=$(ns_new NAME): a command substitution is a subshell, whose E2E_NS is lost.
bench_ns() {
    ns_new "$2" > /dev/null
    printf -v "$1" '%s' "$E2E_PREFIX-$2"
    # No IPv6 on the interfaces made in it: their router and multicast listener messages
    # would be counted as packets that reached dst.
    in_ns "${!1}" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
}

# topo_fwd TAG: namespaces src -- fw -- dst: src 192.0.2.1-16/24 on c0, fw 192.0.2.254 (f0)
# and 198.51.100.254 (f1) forwarding, dst 198.51.100.1/24 on s0; static neighbours (no ARP
# during a measurement); fw's receive processing on FWD_CPU (RPS), so the sender's CPU only
# sends. Sets SRC FW DST C0MAC F0MAC.
topo_fwd() {
    bench_ns SRC "$1-s"; bench_ns FW "$1-f"; bench_ns DST "$1-d"
    ip link add c0 netns "$SRC" type veth peer name f0 netns "$FW"
    ip link add s0 netns "$DST" type veth peer name f1 netns "$FW"
    local i
    for i in $(seq 1 16); do ip -n "$SRC" addr add "192.0.2.$i/24" dev c0; done
    ip -n "$SRC" link set c0 up
    ip -n "$DST" addr add 198.51.100.1/24 dev s0; ip -n "$DST" link set s0 up
    ip -n "$FW" addr add 192.0.2.254/24 dev f0; ip -n "$FW" link set f0 up
    ip -n "$FW" addr add 198.51.100.254/24 dev f1; ip -n "$FW" link set f1 up
    ip -n "$SRC" route add default via 192.0.2.254
    ip -n "$DST" route add default via 198.51.100.254
    in_ns "$FW" sysctl -qw net.ipv4.ip_forward=1
    C0MAC=$(mac_of "$SRC" c0); F0MAC=$(mac_of "$FW" f0)
    local s0mac f1mac
    s0mac=$(mac_of "$DST" s0); f1mac=$(mac_of "$FW" f1)
    ip -n "$FW" neigh replace 198.51.100.1 lladdr "$s0mac" dev f1 nud permanent
    for i in $(seq 1 16); do
        ip -n "$FW" neigh replace "192.0.2.$i" lladdr "$C0MAC" dev f0 nud permanent
    done
    ip -n "$SRC" neigh replace 192.0.2.254 lladdr "$F0MAC" dev c0 nud permanent
    ip -n "$DST" neigh replace 198.51.100.254 lladdr "$f1mac" dev s0 nud permanent
    if [ "$NCPU" -gt 1 ]; then
        local mask
        mask=$(printf '%x' $((1 << FWD_CPU)))
        ip netns exec "$FW" sh -c "echo $mask > /sys/class/net/f0/queues/rx-0/rps_cpus &&
            echo $mask > /sys/class/net/f1/queues/rx-0/rps_cpus"
    fi
}

# bench_report: the table (stdout), --json, --plot, and the run time.
bench_report() {
    [ -t 2 ] && printf '\r\033[K' >&2
    "$PY" "$BENCH_DIR/report.py" --title "$TITLE" --samples "$SAMPLES" --notes "$NOTES" \
        --backends "$(IFS=,; echo "${BACKENDS[*]}")" ${JSON:+--json "$JSON"} \
        ${PLOT:+--plot "$PLOT"} --command "compat-tests/bench/$(basename "$0") $BENCH_ARGS" "$@"
    local rc=$? b
    "$PY" -c "print(f'runtime: {$EPOCHREALTIME - $T0:.0f} s')"
    if [ "$SMOKE" = 1 ]; then
        for b in "${BACKENDS[@]}"; do
            [ "$b" = bpfipt-xdp ] && continue
            [ "$BENCH" = b3 ] && [ "$b" = none ] && continue
            cut -f2 "$SAMPLES" | grep -q "^$b" || { echo "smoke: no sample of $b" >&2; rc=1; }
        done
    fi
    return $rc
}
