#!/bin/bash
# Differential packet test of the datapath against the kernel: seeded random filter-table
# rulesets (user chains, jumps, gotos, RETURN, negations, prefixes and non-contiguous masks,
# ports and ranges, multiport, tcp flags and options, icmp types, iprange, length, ttl, -f,
# comment, mark, interface wildcards, every REJECT type, policies) and packets aimed at each
# rule's edges, sent through two copies of a src -- fw -- dst network: in one, fw's rules are
# loaded by the real iptables-legacy-restore; in the other, through the shim. Every packet's
# fate (delivered to fw, forwarded or sent out which interface, dropped, the ICMP error or TCP
# RST that answered it) must be the same. See difftest/run.py for the details.
#
#   compat-tests/difftest.sh [--seed N] [--cases N] [--only I] [--self-check] [--mutate]
#                            [--counters] [--strict] [--xdp generic|native] [--report FILE]
#                            [-v] ...   (--help for all)
#
# --self-check loads the rules with the real tool on both sides: it must report full agreement
# (the harness is deterministic). --mutate changes one rule on the second side: it must not.
# fw's ICMP rate limits are switched off (net.ipv4.icmp_ratemask=0 and friends) on both sides,
# because bpfipt's REJECT does not rate-limit; with them on, the kernel would drop most errors.
# One difference is excluded (README, Known differences): the device a REJECT reply to one of
# fw's own addresses arrives from (lo for bpfipt, the address's device for the kernel); the
# packets that agree only thanks to it are counted on their own line, --strict counts them as
# disagreements.
# --xdp MODE runs the shim side with the XDP option (`bpfipt xdp MODE`): INPUT at XDP and
# the forwarding fast path must give the same fates (and, with --counters, counts).
# Prints "difftest: A agree of N"; exit status 0 only if all agree.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
run_py_harness diff dt "$@"
