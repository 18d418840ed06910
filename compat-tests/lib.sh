# Shared helpers for the end-to-end tests: namespaces that are always removed, the shim and
# daemon of this checkout, and small assertions. Source it; call `e2e_init` first.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHIM="$ROOT/target/release/libbpfipt.so"
BPFIPT="$ROOT/target/release/bpfipt"
export BPFIPT_DAEMON="$ROOT/target/release/bpfiptd"
E2E_NS=()
E2E_FAILS=0
E2E_PASSES=0
E2E_PREFIX="bpfipt-t$$"

e2e_cleanup() {
    local ns
    for ns in "${E2E_NS[@]}"; do
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
