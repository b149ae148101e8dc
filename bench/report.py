#!/usr/bin/env python3
"""Turns bench/run.sh's raw CSV files into Markdown tables (medians over rounds) and writes
them into bench/README.md between the results markers, keeping the rest of the file.

    report.py RUNS_CSV IDLE_CSV META_FILE README

RUNS_CSV: round,target,mode,status,tps,latency_ms,transactions,cpu_us_per_tx,rss_kib
IDLE_CSV: target,status,clients,rss_before_kib,rss_after_kib
META_FILE: "key: value" lines printed above the tables.
"""

import csv
import statistics
import sys

START, END = "<!-- results:start -->", "<!-- results:end -->"
TARGETS = ("direct", "pgwarden", "pgbouncer")
MODES = ("simple", "extended")


def median(rows, key, digits):
    values = [float(r[key]) for r in rows if r[key] not in ("", "-")]
    return f"{statistics.median(values):,.{digits}f}" if values else "–"


def runs_table(rows):
    lines = [
        "| target | protocol | TPS | avg latency (ms) | proxy CPU per tx (µs) | proxy RSS at end (MiB) | runs ok |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in TARGETS:
        for mode in MODES:
            mine = [r for r in rows if r["target"] == target and r["mode"] == mode]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == "ok"]
            if not ok:
                reason = mine[0]["status"]
                lines.append(f"| {target} | {mode} | {reason} | – | – | – | 0/{len(mine)} |")
                continue
            rss = [dict(r, rss_mib=float(r["rss_kib"]) / 1024) for r in ok if r["rss_kib"] not in ("", "-")]
            lines.append(
                f"| {target} | {mode} | {median(ok, 'tps', 0)} | {median(ok, 'latency_ms', 3)} "
                f"| {median(ok, 'cpu_us_per_tx', 1)} | {median(rss, 'rss_mib', 1) if rss else '–'} "
                f"| {len(ok)}/{len(mine)} |"
            )
    return lines


def idle_table(rows):
    lines = [
        "| proxy | idle clients | RSS before (MiB) | RSS with them (MiB) | KiB per idle client |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['target']} | {row['clients']} | {row['status']} | – | – |")
            continue
        before, after, n = float(row["rss_before_kib"]), float(row["rss_after_kib"]), int(row["clients"])
        lines.append(
            f"| {row['target']} | {n} | {before / 1024:.1f} | {after / 1024:.1f} | {(after - before) / n:.1f} |"
        )
    return lines


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    runs_csv, idle_csv, meta_file, readme = sys.argv[1:5]
    with open(meta_file) as f:
        meta = [line.rstrip("\n") for line in f if line.strip()]
    block = [START, ""] + [f"- {line}" for line in meta] + [""]
    block += ["Throughput (`pgbench -S`, median of rounds):", ""] + runs_table(read_csv(runs_csv))
    block += ["", "Memory per idle client (logged in, no server held):", ""] + idle_table(read_csv(idle_csv))
    block += ["", END]
    text = "\n".join(block)
    print(text)
    try:
        with open(readme) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n## Results\n\n" + text + "\n"
    with open(readme, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
