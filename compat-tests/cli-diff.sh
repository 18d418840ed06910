#!/bin/bash
# Differential test of the command-line behaviour: each case file in cli-cases/ is run line by
# line in a fresh namespace against the kernel (real iptables-legacy) and in another with the
# shim; every line's exit status, stdout and stderr must be equal, and so must
# iptables-save -c and ip6tables-save -c at the end.
#
#   compat-tests/cli-diff.sh [case-file...]
# Prints "cli-diff: A agree of N" (N = compared lines and final dumps).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init

bindir=$(mktemp -d)
trap 'rm -rf "$bindir"; e2e_cleanup' EXIT
# The cases say iptables, iptables-save, ...: make those the legacy tools.
for t in iptables ip6tables iptables-save ip6tables-save iptables-restore ip6tables-restore; do
    ln -s "/usr/sbin/${t/tables/tables-legacy}" "$bindir/$t"
done
export PATH="$bindir:$PATH"

cases=("$@")
[ ${#cases[@]} = 0 ] && cases=("$(dirname "$0")"/cli-cases/*.cmds)
agree=0
total=0
out=$(mktemp -d)
for c in "${cases[@]}"; do
    name=$(basename "$c" .cmds)
    k=$(ns_new "k-$name")
    s=$(ns_new "s-$name")
    n=0
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        n=$((n + 1))
        kern "$k" bash -c "$line" >"$out/k.out" 2>"$out/k.err"; krc=$?
        shim "$s" bash -c "$line" >"$out/s.out" 2>"$out/s.err"; src=$?
        # iptables-save's header and trailer carry the time: a second may pass in between.
        for f in k.out s.out; do nodates <"$out/$f" >"$out/$f.nd"; mv "$out/$f.nd" "$out/$f"; done
        total=$((total + 1))
        if [ $krc = $src ] && cmp -s "$out/k.out" "$out/s.out" && cmp -s "$out/k.err" "$out/s.err"; then
            agree=$((agree + 1))
        else
            fail "$name:$n: $line"
            echo "  kernel rc=$krc, shim rc=$src"
            diff <(cat "$out/k.out" "$out/k.err") <(cat "$out/s.out" "$out/s.err") | head -20 | sed 's/^/  /'
        fi
    done < "$c"
    for save in iptables-save ip6tables-save; do
        total=$((total + 1))
        kern "$k" $save -c | nodates >"$out/k.save"
        shim "$s" $save -c | nodates >"$out/s.save"
        if cmp -s "$out/k.save" "$out/s.save"; then
            agree=$((agree + 1))
        else
            fail "$name: final $save -c differs"
            diff "$out/k.save" "$out/s.save" | head -20 | sed 's/^/  /'
        fi
    done
    # The kernel's tables of the shim namespace hold rules only for a family the datapath
    # cannot run (bpfipt status says so); otherwise they must be untouched or given back.
    total=$((total + 1))
    st=$(ip netns exec "$s" "$BPFIPT" status 2>/dev/null)
    bad=""
    for fam in 4 6; do
        save=iptables-save; [ $fam = 6 ] && save=ip6tables-save
        name=ipv$fam
        if ! grep -q "^$name: enforced by the kernel" <<< "$st"; then
            live=$(kern "$s" $save | grep -E '^-A|^:[A-Z]+ (DROP|QUEUE)' || true)
            [ -n "$live" ] && bad="$bad $name:$(head -n 1 <<< "$live")"
        fi
    done
    if [ -z "$bad" ]; then
        agree=$((agree + 1))
    else
        fail "$name: the kernel's tables hold rules of a family the datapath enforces:$bad"
    fi
    ns_del "$k"
    ns_del "$s"
done
rm -rf "$out"
echo "cli-diff: $agree agree of $total"
[ $agree = $total ]
