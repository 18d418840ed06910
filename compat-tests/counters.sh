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
. "$(dirname "$0")/lib.sh"
run_py_harness counters ct "$@"
