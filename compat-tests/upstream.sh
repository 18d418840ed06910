#!/bin/bash
# Runs the upstream iptables test suites (iptables-test.py and iptables/tests/shell) against the
# installed iptables-legacy binaries with libbpfipt.so preloaded into every process they start.
#
#   compat-tests/upstream.sh            with the shim
#   compat-tests/upstream.sh --kernel   the same suites against the kernel (the baseline)
#   compat-tests/upstream.sh --strict   with the shim and BPFIPT_STRICT=1: a commit the eBPF
#                                       datapath cannot enforce fails instead of falling back,
#                                       so the passes are what bpfipt runs natively
#
# Prints "iptables-test: P passed of T" and "shell: P passed of T"; failures are listed in
# compat-tests/.cache/upstream-*.log. Exit status 0 when both ran (the counts are the result).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
mode=shim
[ "${1:-}" = "--kernel" ] && mode=kernel
[ "${1:-}" = "--strict" ] && mode=strict

src=$("$here/fetch-iptables-source.sh")
lib="$root/target/release/libbpfipt.so"
if [ "$mode" != kernel ]; then
    [ "$mode" = strict ] && export BPFIPT_STRICT=1
    [ -f "$lib" ] || (cd "$root" && cargo build --release >&2)
    export LD_PRELOAD="$lib"
    export BPFIPT_DAEMON="$root/target/release/bpfiptd"
fi
logdir="$here/.cache"
before=$(pgrep -x bpfiptd | sort || true)

cleanup() {
    # Daemons of the suites' namespaces exit on their own once the namespace is unused; give
    # them a moment, then make sure none of ours is left.
    for _ in $(seq 1 50); do
        now=$(pgrep -x bpfiptd | sort || true)
        extra=$(comm -13 <(echo "$before") <(echo "$now") | grep . || true)
        [ -z "$extra" ] && return 0
        sleep 0.2
    done
    echo "upstream.sh: bpfiptd processes still running after the suites: $extra (killed)" >&2
    kill $extra 2>/dev/null || true
}
trap cleanup EXIT

cd "$src"
python3 iptables-test.py -H -l > "$logdir/upstream-$mode-iptables-test.log" 2>&1 || true
line=$(grep -E '^legacy: [0-9]+ test files, [0-9]+ unit tests, [0-9]+ passed' "$logdir/upstream-$mode-iptables-test.log" | tail -n 1)
total=$(echo "$line" | sed -E 's/.* ([0-9]+) unit tests.*/\1/')
passed=$(echo "$line" | sed -E 's/.* ([0-9]+) passed/\1/')
echo "iptables-test: ${passed:-0} passed of ${total:-0}"

cd "$src/iptables/tests/shell"
./run-tests.sh -H -l > "$logdir/upstream-$mode-shell.log" 2>&1 || true
line=$(grep -E 'legacy results:' "$logdir/upstream-$mode-shell.log" | tail -n 1)
ok=$(echo "$line" | sed -E 's/.*\[OK\] ([0-9]+).*/\1/')
tot=$(echo "$line" | sed -E 's/.*\[TOTAL\] ([0-9]+).*/\1/')
echo "shell: ${ok:-0} passed of ${tot:-0}"
