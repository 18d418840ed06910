#!/bin/bash
# B2 (BENCH.md): classification cost per packet, from the kernel's own duration of
# BPF_PROG_TEST_RUN of the ingress program (repeat 100000), for a packet that matches no rule
# and falls to the policy (`miss`) and one that matches the last rule (`last`), with N
# ClassBench-like rules in one chain (translator::gen). bpfipt only: neither the kernel's
# ip_tables nor nf_tables can be run by BPF_PROG_TEST_RUN, so there are no ratio columns;
# BENCH.md gives the references. Wraps translator/tests/bench_b2.rs (b2_ns_per_packet).
#   compat-tests/bench/b2.sh [--rules 10,1000,10000,50000] [--rounds 5] [--json F] [--plot F.png]
set -uo pipefail
BENCH=b2 TITLE="B2: classification cost, ns per packet (BPF_PROG_TEST_RUN; lower is better)"
SMOKE_RULES=10,100 DEFAULT_RULES=10,1000,10000,50000 DEFAULT_BACKENDS=bpfipt DEFAULT_DURATION=1
. "$(dirname "$0")/lib.sh"
bench_init "$@"
[ "${BACKENDS[*]}" = bpfipt ] || { echo "$0: B2 measures bpfipt only" >&2; exit 2; }

progress "building the bench_b2 test"
(cd "$ROOT" && cargo test --release -p bpfipt-translator --test bench_b2 --no-run) \
    > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; exit 1; }
progress "measuring N=${RULES[*]} (the compile of 50000 rules takes a few seconds)"
(cd "$ROOT" && BPFIPT_B2_RULES=$(IFS=,; echo "${RULES[*]}") BPFIPT_B2_ROUNDS=$ROUNDS \
    cargo test --release -p bpfipt-translator --test bench_b2 -- --ignored --nocapture \
    --test-threads=1 --exact b2_ns_per_packet 2>&1) > "$WORK/run.log" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
    last=$(grep -c '^sample' "$WORK/run.log")
    progress "measuring: $last of $((${#RULES[@]} * 2 * ROUNDS)) samples"
    sleep 1
done
wait "$pid" || { cat "$WORK/run.log" >&2; exit 1; }
awk -F'\t' '$1 == "sample" {
    m = $2 == "miss" ? "ns, miss (policy)" : "ns, last rule"
    printf "%s\tbpfipt\t%s\t%s\n", m, $3, $4 }' "$WORK/run.log" >> "$SAMPLES"
grep -E '^ *[0-9]+ +[0-9.]+ ' "$WORK/run.log" | awk '{print $1 " rules: compile " $2 " ms"}' |
    sed 's/^/compile time (once): /' >> "$NOTES"
bench_report --lines metric
