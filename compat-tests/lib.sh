# Shared helpers for the end-to-end tests: namespaces that are always removed, the shim and
# daemon of this checkout, and small assertions. Source it; call `e2e_init` first.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The build of this checkout (cargo's CARGO_TARGET_DIR if set, as `cargo build` used it).
REL="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SHIM="$REL/libbpfipt.so"
BPFIPT="$REL/bpfipt"
export BPFIPT_DAEMON="$REL/bpfiptd"
E2E_NS=()
E2E_FAILS=0
E2E_PASSES=0
# A caller may give its own prefix (helpers sharing a machine keep theirs apart).
E2E_PREFIX="${E2E_PREFIX:-bpfipt-t$$}"

e2e_cleanup() {
    local ns
    # The namespaces' processes are killed below: bash would print "Killed" for each of this
    # shell's background jobs among them.
    disown -a 2>/dev/null || true
    # Also those made by ns_new in a subshell (`X=$(ns_new ..)`), whose E2E_NS entry is
    # lost: the prefix carries this run's PID.
    for ns in "${E2E_NS[@]}" $(ip netns list | awk '{print $1}' | grep "^$E2E_PREFIX-"); do
        # Stop the namespace's daemon first: it holds the namespace alive otherwise.
        ip netns exec "$ns" "$BPFIPT" daemon stop >/dev/null 2>&1 || true
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    E2E_NS=()
}

e2e_init() {
    [ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 77; }
    [ -f "$SHIM" ] || (cd "$ROOT" && cargo build --release >&2)
    trap e2e_cleanup EXIT INT TERM
}

# ns_new NAME: creates namespace $E2E_PREFIX-NAME with lo up; prints its name.
ns_new() {
    local ns="$E2E_PREFIX-$1"
    ip netns add "$ns"
    E2E_NS+=("$ns")
    ip -n "$ns" link set lo up
    echo "$ns"
}

# ns_del NAME: stops its daemon and removes it now.
ns_del() {
    local ns="$1" i
    ip netns exec "$ns" "$BPFIPT" daemon stop >/dev/null 2>&1 || true
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    for i in "${!E2E_NS[@]}"; do [ "${E2E_NS[$i]}" = "$ns" ] && unset 'E2E_NS[$i]'; done
}

# shim NS CMD...: runs CMD in NS with the shim preloaded.
shim() {
    local ns="$1"; shift
    ip netns exec "$ns" env LD_PRELOAD="$SHIM" "$@"
}

# kern NS CMD...: runs CMD in NS against the kernel.
kern() {
    local ns="$1"; shift
    ip netns exec "$ns" "$@"
}

pass() { E2E_PASSES=$((E2E_PASSES + 1)); echo "ok   $*"; }
fail() { E2E_FAILS=$((E2E_FAILS + 1)); echo "FAIL $*"; }

# check DESC CONDITION-COMMAND...
check() {
    local desc="$1"; shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}

e2e_summary() {
    echo "$(basename "$0" .sh): $E2E_PASSES passed, $E2E_FAILS failed"
    [ "$E2E_FAILS" = 0 ]
}

# Removes the date comments of iptables-save output.
nodates() { grep -v '^# \(Generated\|Completed\)'; }

# topo3 NAME: namespaces NAME-c (10.1.0.2) -- NAME-f (10.1.0.1 | 10.2.0.1, forwarding) --
# NAME-s (10.2.0.2); sets C, F, S to their names. Removed by e2e_cleanup.
topo3() {
    C=$(ns_new "$1-c"); F=$(ns_new "$1-f"); S=$(ns_new "$1-s")
    ip link add c0 netns "$C" type veth peer name f0 netns "$F"
    ip link add s0 netns "$S" type veth peer name f1 netns "$F"
    ip -n "$C" addr add 10.1.0.2/24 dev c0; ip -n "$C" link set c0 up
    ip -n "$S" addr add 10.2.0.2/24 dev s0; ip -n "$S" link set s0 up
    ip -n "$F" addr add 10.1.0.1/24 dev f0; ip -n "$F" link set f0 up
    ip -n "$F" addr add 10.2.0.1/24 dev f1; ip -n "$F" link set f1 up
    ip -n "$C" route add default via 10.1.0.1
    ip -n "$S" route add default via 10.2.0.1
    ip netns exec "$F" sysctl -qw net.ipv4.ip_forward=1
}

# xdp_pass_obj DIR: builds DIR/pass.o, a native XDP program that passes everything, and
# prints its path. On a veth it lets the peer's native redirects in (veth_xdp_xmit drops them
# unless this end has XDP or GRO on).
xdp_pass_obj() {
    cat > "$1/pass.c" <<'C'
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] __attribute__((section("license"), used)) = "GPL";
C
    clang-19 -O2 -target bpf -I/usr/include/x86_64-linux-gnu -c "$1/pass.c" -o "$1/pass.o" &&
        echo "$1/pass.o"
}

# reason NS NAME: the datapath's count of a verdict reason (`bpfipt status`).
reason() {
    ip netns exec "$1" "$BPFIPT" status | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1 | grep . || echo 0
}

UDPFLOW="$ROOT/compat-tests/tools/udpflow.py"

# daemon_pid NS: the namespace's bpfiptd, if any.
daemon_pid() {
    local p
    for p in $(ip netns pids "$1" 2>/dev/null); do
        [ "$(cat /proc/$p/comm 2>/dev/null)" = bpfiptd ] && echo "$p"
    done
}

# run_py_harness MODE TAG ARGS...: runs difftest/run.py MODE (diff, counters) with a namespace
# prefix of its own, and removes what it made on any exit. run.py runs in the background so
# an interrupt reaches the trap at once; it removes what it made when it gets SIGTERM, and the
# EXIT trap makes sure. Exits with run.py's status.
run_py_harness() {
    local mode="$1" tag="$2"; shift 2
    [ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 77; }
    local py=/usr/bin/python3 here="$ROOT/compat-tests"
    [ -x $py ] || py=python3
    HARNESS_PY=$py HARNESS_PREFIX="bpfipt-$tag$$"
    trap '"$HARNESS_PY" "$ROOT/compat-tests/difftest/run.py" cleanup --prefix "$HARNESS_PREFIX" >/dev/null 2>&1' EXIT
    case " $* " in
        *" --self-check "*) ;;
        *) [ -f "$SHIM" ] || (cd "$ROOT" && cargo build --release >&2) ;;
    esac
    "$py" "$here/difftest/run.py" "$mode" --prefix "$HARNESS_PREFIX" "$@" &
    HARNESS_CHILD=$!
    trap 'kill -TERM $HARNESS_CHILD 2>/dev/null; wait $HARNESS_CHILD; exit 130' INT TERM
    wait $HARNESS_CHILD
    exit $?
}
