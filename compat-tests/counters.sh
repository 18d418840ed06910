#!/bin/bash
# Counters against the kernel: a fixed filter ruleset (rules in INPUT, FORWARD and OUTPUT, user
# chains left by RETURN and by falling off their end, policy hits, REJECT replies counted in
# OUTPUT) and known traffic through the network of difftest.sh, once with the rules loaded by
# the real iptables-legacy-restore and once through the shim; then
# `iptables-legacy -L -v -x -n` and `iptables-legacy-save -c` of both sides must be equal
# (packets and bytes, exactly). The kernel side must show every rule hit, or it fails.
#
#   compat-tests/counters.sh [--self-check] [--mutate] [-v]
#
# --self-check: both sides are the kernel (must agree). --mutate: one rule differs (must not).
# Prints "counters: A agree of N"; exit status 0 only if all agree.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 77; }
py=/usr/bin/python3
[ -x $py ] || py=python3
prefix="bpfipt-ct$$"
cleanup() { "$py" "$here/difftest/run.py" cleanup --prefix "$prefix" >/dev/null 2>&1; }
trap cleanup EXIT
case " $* " in
    *" --self-check "*) ;;
    *) [ -f "$SHIM" ] || (cd "$ROOT" && cargo build --release >&2) ;;
esac
# In the background, so that an interrupt reaches the trap at once; run.py removes what it
# made when it gets SIGTERM, and the EXIT trap makes sure.
"$py" "$here/difftest/run.py" counters --prefix "$prefix" "$@" &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child; exit 130' INT TERM
wait $child
