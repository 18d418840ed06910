#!/bin/bash
# Fuzzes IPT_SO_SET_REPLACE's parser and validator (fuzz/fuzz_targets/set_replace.rs) with
# cargo-fuzz for N seconds, starting from valid tables.
#
#   compat-tests/fuzz.sh [seconds]      default 60
#
# Exit status non-zero when the target crashed (the input is left in fuzz/artifacts/).
# Rust here is stable only: the default build uses no sanitizer (ASan needs -Z flags) but has
# debug assertions and overflow checks. FUZZ_SANITIZER=address builds with ASan through
# RUSTC_BOOTSTRAP=1 instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
secs=${1:-60}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz >&2
fi
corpus="$root/fuzz/corpus/set_replace"
mkdir -p "$corpus"
# Seeds: every initial table of both families and tables with user chains (kernel::fuzz::seeds).
(cd "$root" && cargo run -q -p bpfipt-translator --example fuzz_seeds -- "$corpus")

cd "$root/fuzz"
sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
cargo fuzz run --sanitizer "$sanitizer" --release --debug-assertions set_replace "$corpus" -- \
    -max_total_time="$secs" -max_len=16384 -print_final_stats=1
