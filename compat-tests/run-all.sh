#!/bin/bash
# Runs every test of bpfipt, as root: unit and BPF tests (cargo test), the CLI differential
# test against the kernel, the control-plane robustness tests, and the upstream iptables
# suites (with the kernel's own result measured in the same run as the bar to reach).
# Exit status 0 only if everything passed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
failed=()
step() {
    local name="$1"; shift
    echo
    echo "=== $name"
    if "$@"; then echo "=== $name: ok"; else echo "=== $name: FAILED"; failed+=("$name"); fi
}

step "build" cargo build --release --workspace
step "cargo test" cargo test --release --workspace
step "cli-diff" "$here/cli-diff.sh"
step "daemon" "$here/daemon.sh"
step "package" "$here/package.sh"
step "counters" "$here/counters.sh"
step "datapath" "$here/datapath.sh"
step "xdp" "$here/xdp.sh"
# Packets through random rulesets, the kernel against the datapath, and the counters after
# each ruleset (about a minute); another seed with BPFIPT_DIFFTEST_SEED, more packets with
# BPFIPT_DIFFTEST_CASES.
step "difftest" "$here/difftest.sh" --cases "${BPFIPT_DIFFTEST_CASES:-8000}" \
    --seed "${BPFIPT_DIFFTEST_SEED:-1}" --counters --show 3
# Seed 7 once found what seed 1 did not: a chain's stale port lists after its last port rule
# went (compile.rs, a_chain_left_without_port_rules_drops_its_port_lists); 30 s more.
step "difftest seed 7" "$here/difftest.sh" --cases 3000 --seed 7 --counters --show 3
step "stateful" "$here/stateful.sh"
# The same with the XDP option on bpfipt's side, which must leave tracked packets to TC.
step "stateful (xdp generic)" "$here/stateful.sh" --xdp generic
step "stateful (xdp native)" "$here/stateful.sh" --xdp native
step "fuzz (60 s)" "$here/fuzz.sh" 60

# The benchmarks measure (compat-tests/bench, BENCH.md); here only that they still run: one
# round of tiny sizes each.
bench_smoke() {
    local b
    for b in b1 b2 b3 b4; do
        "$here/bench/$b.sh" --smoke > /dev/null || { echo "bench/$b.sh --smoke failed"; return 1; }
    done
}
step "benchmarks (smoke)" bench_smoke

upstream() {
    local k s
    k=$("$here/upstream.sh" --kernel) || return 1
    s=$("$here/upstream.sh") || return 1
    echo "kernel:  $(echo "$k" | tr '\n' ' ')"
    echo "bpfipt:  $(echo "$s" | tr '\n' ' ')"
    # Informational: what passes with BPFIPT_STRICT=1, i.e. without the kernel fallback.
    echo "bpfipt, eBPF only (BPFIPT_STRICT=1):  $("$here/upstream.sh" --strict | tr '\n' ' ')"
    local kp sp kt st
    for suite in iptables-test shell; do
        kp=$(echo "$k" | sed -n "s/^$suite: \([0-9]*\) passed of \([0-9]*\)/\1/p")
        sp=$(echo "$s" | sed -n "s/^$suite: \([0-9]*\) passed of \([0-9]*\)/\1/p")
        kt=$(echo "$k" | sed -n "s/^$suite: \([0-9]*\) passed of \([0-9]*\)/\2/p")
        st=$(echo "$s" | sed -n "s/^$suite: \([0-9]*\) passed of \([0-9]*\)/\2/p")
        if [ -z "$sp" ] || [ "$sp" -lt "$kp" ] || [ "$st" != "$kt" ]; then
            echo "$suite: bpfipt $sp of $st is below the kernel's $kp of $kt"
            return 1
        fi
    done
}
step "upstream suites" upstream

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "all tests passed"
else
    echo "FAILED: ${failed[*]}"
    exit 1
fi
