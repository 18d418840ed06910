#!/usr/bin/python3
"""The table, JSON and plot of a benchmark run (compat-tests/bench/b*.sh).

  report.py --title T --samples FILE [--notes FILE] [--backends a,b,..]
            [--json OUT] [--plot OUT.png] [--lines backend|metric] [--command CMD]

FILE holds one sample a line, tab-separated: metric, backend, rules, value. A metric name
carries its unit ("kpps", "ms -A"). Rows are grouped by metric, then rule count, backends in
--backends order (then first-seen order). Ratios are median / median of `legacy` (and of
`none`) for the same metric and rule count; a backend label such as `bpfipt(kernel fallback)`
is kept as it is.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load(path):
    """(metric, backend, rules) -> [values], keeping first-seen orders."""
    data, metrics, backends = {}, [], []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            metric, backend, rules, value = line.split("\t")
            if metric not in metrics:
                metrics.append(metric)
            if backend not in backends:
                backends.append(backend)
            data.setdefault((metric, backend, int(rules)), []).append(float(value))
    return data, metrics, backends


def base(backend):
    """`bpfipt(kernel fallback)` sorts and colours as `bpfipt`."""
    return backend.split("(", 1)[0]


def rows(data, metrics, backends):
    out = []
    for m in metrics:
        for n in sorted({k[2] for k in data if k[0] == m}):
            meds = {}
            for b in backends:
                v = data.get((m, b, n))
                if v:
                    meds[b] = statistics.median(v)
            for b in backends:
                v = data.get((m, b, n))
                if not v:
                    continue
                med = meds[b]

                def ratio(ref):
                    r = meds.get(ref)
                    return med / r if r else None

                out.append({
                    "metric": m, "backend": b, "rules": n, "rounds": len(v),
                    "median": med, "min": min(v), "max": max(v), "samples": v,
                    "ratio_legacy": ratio("legacy"), "ratio_none": ratio("none"),
                })
    return out


def num(x):
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(rs, title, notes):
    head = ["metric", "backend", "rules", "median", "min", "max", "x legacy", "x none"]
    body = [[r["metric"], r["backend"], str(r["rules"]), num(r["median"]), num(r["min"]),
             num(r["max"]), num(r["ratio_legacy"]), num(r["ratio_none"])] for r in rs]
    # Ratio columns only where their reference was measured.
    keep = [i for i in range(len(head))
            if i < 6 or any(r[("ratio_legacy", "ratio_none")[i - 6]] is not None for r in rs)]
    head = [head[i] for i in keep]
    body = [[c[i] for i in keep] for c in body]
    w = [max(len(c[i]) for c in [head] + body) for i in range(len(head))]
    lines = [title]
    fmt = lambda c: "  ".join(x.ljust(w[i]) if i < 2 else x.rjust(w[i]) for i, x in enumerate(c))
    lines.append(fmt(head))
    prev = None
    for c, r in zip(body, rs):
        key = (r["metric"], r["rules"])
        if prev is not None and key != prev:
            lines.append("")
        prev = key
        lines.append(fmt(c))
    rounds = sorted({r["rounds"] for r in rs})
    refs = ", ".join(head[6:])
    lines.append(f"(median, min, max of {'/'.join(map(str, rounds))} rounds"
                 + (f"; {refs}: median / that backend's median, same metric and rules)"
                    if refs else ")"))
    for n in notes:
        lines.append("note: " + n)
    return "\n".join(lines)


def plot(rs, metrics, backends, title, out, lines_by):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [None] if lines_by == "metric" else metrics
    cols = min(len(groups), 2)
    rows_ = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(6.4 * cols, 4.2 * rows_ + 0.6), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    colours = {"none": "tab:gray", "tc-empty": "tab:gray", "legacy": "tab:blue", "nft": "tab:orange",
               "bpfipt": "tab:green", "bpfipt-xdp": "tab:red"}
    for ax, g in zip(axes.flat, groups):
        sel = [r for r in rs if g is None or r["metric"] == g]
        ns = sorted({r["rules"] for r in sel})
        pos = {n: i for i, n in enumerate(ns)}
        keys = []
        for r in sel:
            k = (r["backend"], r["metric"]) if g is None else (r["backend"],)
            if k not in keys:
                keys.append(k)
        for k in keys:
            pts = [r for r in sel if (r["backend"], r["metric"])[:len(k)] == k]
            x = [pos[r["rules"]] for r in pts]
            y = [r["median"] for r in pts]
            lo = [r["median"] - r["min"] for r in pts]
            hi = [r["max"] - r["median"] for r in pts]
            label = " ".join(k)
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label,
                        color=colours.get(base(k[0])) if g is not None else None,
                        linestyle=":" if base(k[0]) == "tc-empty" else
                        "--" if "(" in k[0] else "-")
        ys = [r["median"] for r in sel if r["median"] > 0]
        if ys and max(ys) / min(ys) > 20:
            ax.set_yscale("log")
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("rules in the chain")
        # One axis for several metrics: their common unit ("ns" of "ns, miss (policy)").
        ax.set_ylabel(g if g is not None else sel[0]["metric"].split(",")[0])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    m = machine()
    fig.suptitle(f"{title}\n{m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, {m['date']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--title", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--notes")
    p.add_argument("--backends", default="")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--lines", choices=["backend", "metric"], default="backend")
    p.add_argument("--command", default="")
    a = p.parse_args()
    data, metrics, seen = load(a.samples)
    order = [b for b in a.backends.split(",") if b]
    backends = sorted(seen, key=lambda b: (order.index(base(b)) if base(b) in order
                                           else len(order), seen.index(b)))
    notes = []
    if a.notes and os.path.exists(a.notes):
        with open(a.notes) as f:
            notes = [line.strip() for line in f if line.strip()]
    rs = rows(data, metrics, backends)
    if not rs:
        print("no samples", file=sys.stderr)
        return 1
    print(table(rs, a.title, notes))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"title": a.title, "command": a.command, "machine": machine(),
                       "rows": rs, "notes": notes}, f, indent=1)
            f.write("\n")
    if a.plot:
        plot(rs, metrics, backends, a.title, a.plot, a.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
