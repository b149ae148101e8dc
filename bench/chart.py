#!/usr/bin/env python3
"""Draws bench/run.sh's transaction-mode results as a PNG: TPS and proxy CPU per transaction
by client count, pgwarden vs PgBouncer vs direct PostgreSQL, one line per protocol.

    chart.py RUNS_CSV OUT_PNG

Medians over rounds, successful runs only. Exits 2 without writing anything if matplotlib
is not installed.
"""

import csv
import statistics
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
except ImportError:
    print("chart.py: matplotlib is not installed; no chart", file=sys.stderr)
    sys.exit(2)

COLORS = {"direct": "#555555", "pgwarden": "#1f77b4", "pgbouncer": "#d62728"}
STYLES = {"simple": "-", "extended": "--", "prepared": ":"}


def series(rows, target, mode, key):
    xs, ys = [], []
    for n in sorted({int(r["clients"]) for r in rows}):
        values = [
            float(r[key])
            for r in rows
            if r["target"] == target and r["mode"] == mode and int(r["clients"]) == n
            and r["status"] == "ok" and r[key] not in ("", "-")
        ]
        if values:
            xs.append(n)
            ys.append(statistics.median(values))
    return xs, ys


def main():
    runs_csv, out = sys.argv[1:3]
    with open(runs_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "transaction"]
    if not rows:
        print("chart.py: no transaction-mode runs; no chart", file=sys.stderr)
        return 1
    modes = [m for m in STYLES if any(r["mode"] == m for r in rows)]
    fig, (tps_ax, cpu_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for target, color in COLORS.items():
        for mode in modes:
            label = f"{target} ({mode})"
            xs, ys = series(rows, target, mode, "tps")
            if xs:
                tps_ax.plot(xs, ys, STYLES[mode], color=color, marker="o", label=label)
            if target != "direct":
                xs, ys = series(rows, target, mode, "cpu_us_per_tx")
                if xs:
                    cpu_ax.plot(xs, ys, STYLES[mode], color=color, marker="o", label=label)
    for ax, title, ylabel in (
        (tps_ax, "TPS (pgbench -S)", "transactions per second"),
        (cpu_ax, "Proxy CPU per transaction", "µs (user + system)"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("pgbench clients (transaction mode)")
        ax.set_xticks(sorted({int(r["clients"]) for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    print(f"chart.py: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
