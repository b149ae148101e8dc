#!/usr/bin/env python3
"""Turns bench/run.sh's raw CSV files into Markdown tables (medians over rounds) and writes
them into bench/README.md between its marker pairs, keeping the rest of the file.

    report.py RUNS_CSV IDLE_CSV META_FILE README [CHART_PNG]

RUNS_CSV: round,phase,target,clients,mode,status,tps,latency_ms,transactions,connection_ms,
          cpu_us_per_tx,rss_kib,error (phase: session or transaction, the proxies' pool mode;
          error: a failed run's first error line from pgbench)
IDLE_CSV: target,pool_mode,status,clients,rss_before_kib,rss_after_kib
META_FILE: "key: value" lines printed above the tables.
CHART_PNG: referenced from the transaction-mode section if the file exists.

Marker pairs (each replaced with its table; a missing pair is appended at the end):
  <!-- results:start --> ... <!-- results:end -->                          run, machine, session mode
  <!-- results-transaction:start --> ... <!-- results-transaction:end -->  transaction mode
  <!-- results-idle:start --> ... <!-- results-idle:end -->                idle clients
"""

import csv
import os
import statistics
import sys

TARGETS = ("direct", "pgwarden", "pgbouncer")


def median(rows, key, digits):
    values = [float(r[key]) for r in rows if r[key] not in ("", "-")]
    return f"{statistics.median(values):,.{digits}f}" if values else "–"


def failure(row):
    """What a failed run's TPS cell says: the status, a known cause, pgbench's first error."""
    error = (row.get("error") or "").strip()
    if row["status"] != "failed":
        text = row["status"]
    elif "prepared statement" in error and ("does not exist" in error or "already exists" in error):
        text = "fails (no prepared statements in transaction mode)"
    else:
        text = "fails"
    if error:
        text += ": `" + error.replace("`", "'").replace("|", "\\|") + "`"
    return text


def row_cells(mine):
    """TPS, latency, CPU/tx, RSS and runs-ok cells for the runs of one table row."""
    ok = [r for r in mine if r["status"] == "ok"]
    if not ok:
        runs = "–" if mine[0]["status"].startswith("n/a") else f"0/{len(mine)}"
        return [failure(mine[0]), "–", "–", "–", "–", runs]
    # RSS from the first round only: runs go up in client count within a round, so that is
    # the memory after serving at most this many clients. Later rounds would add what the
    # instance kept from earlier, larger runs (a 10-client run after a 1,000-client one).
    with_rss = sorted((r for r in ok if r["rss_kib"] not in ("", "-")), key=lambda r: int(r["round"]))
    rss = [dict(with_rss[0], rss_mib=float(with_rss[0]["rss_kib"]) / 1024)] if with_rss else []
    return [
        median(ok, "tps", 0),
        median(ok, "latency_ms", 3),
        median(ok, "connection_ms", 0),
        median(ok, "cpu_us_per_tx", 1),
        median(rss, "rss_mib", 1) if rss else "–",
        f"{len(ok)}/{len(mine)}",
    ]


HEADER = (
    "TPS | avg latency (ms) | connect time (ms) | proxy CPU per tx (µs) "
    "| proxy RSS after round 1 (MiB) | runs ok |"
)
ALIGN = " ---: | ---: | ---: | ---: | ---: | ---: |"


def session_table(rows):
    rows = [r for r in rows if r["phase"] == "session"]
    lines = ["| target | protocol | " + HEADER, "| --- | --- |" + ALIGN]
    modes = [m for m in ("simple", "extended", "prepared") if any(r["mode"] == m for r in rows)]
    for target in TARGETS:
        for mode in modes:
            mine = [r for r in rows if r["target"] == target and r["mode"] == mode]
            if mine:
                lines.append(f"| {target} | {mode} | " + " | ".join(row_cells(mine)) + " |")
    return lines


def transaction_table(rows):
    rows = [r for r in rows if r["phase"] == "transaction"]
    lines = ["| clients | protocol | target | " + HEADER, "| ---: | --- | --- |" + ALIGN]
    clients = sorted({int(r["clients"]) for r in rows})
    modes = [m for m in ("simple", "extended", "prepared") if any(r["mode"] == m for r in rows)]
    for n in clients:
        for mode in modes:
            for target in TARGETS:
                mine = [r for r in rows if r["target"] == target and r["mode"] == mode and int(r["clients"]) == n]
                if mine:
                    lines.append(f"| {n} | {mode} | {target} | " + " | ".join(row_cells(mine)) + " |")
    return lines


def tps_summary(rows):
    """Transaction-mode TPS by client count: each proxy's protocols side by side, and
    pgwarden's prepared over extended (its statement rewriting against re-parsing)."""
    rows = [r for r in rows if r["phase"] == "transaction"]
    modes = [m for m in ("simple", "extended", "prepared") if any(r["mode"] == m for r in rows)]
    if "prepared" not in modes or "extended" not in modes:
        return []
    proxies = [t for t in ("pgwarden", "pgbouncer") if any(r["target"] == t for r in rows)]
    head = ["clients"] + [f"{t} {m}" for t in proxies for m in modes] + ["pgwarden prepared / extended"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]

    def tps(target, mode, n):
        mine = [r for r in rows if r["target"] == target and r["mode"] == mode and int(r["clients"]) == n]
        ok = [float(r["tps"]) for r in mine if r["status"] == "ok" and r["tps"]]
        if ok:
            return statistics.median(ok)
        return "fails" if mine else None

    for n in sorted({int(r["clients"]) for r in rows}):
        cells = [str(n)]
        for t in proxies:
            for m in modes:
                v = tps(t, m, n)
                cells.append("–" if v is None else v if isinstance(v, str) else f"{v:,.0f}")
        ext, prep = tps("pgwarden", "extended", n), tps("pgwarden", "prepared", n)
        ratio = f"{prep / ext:.2f}×" if isinstance(ext, float) and isinstance(prep, float) else "–"
        lines.append("| " + " | ".join(cells + [ratio]) + " |")
    return lines


def idle_table(rows):
    lines = [
        "| proxy | pool mode | idle clients | RSS before (MiB) | RSS with them (MiB) | KiB per idle client |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['target']} | {row['pool_mode']} | {row['clients']} | {row['status']} | – | – |")
            continue
        before, after, n = float(row["rss_before_kib"]), float(row["rss_after_kib"]), int(row["clients"])
        lines.append(
            f"| {row['target']} | {row['pool_mode']} | {n} | {before / 1024:.1f} | {after / 1024:.1f} "
            f"| {(after - before) / n:.1f} |"
        )
    return lines


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def replace_block(text, name, lines):
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = "\n".join([start, ""] + lines + ["", end])
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main():
    runs_csv, idle_csv, meta_file, readme = sys.argv[1:5]
    chart = sys.argv[5] if len(sys.argv) > 5 else ""
    with open(meta_file) as f:
        meta = [line.rstrip("\n") for line in f if line.strip()]
    runs = read_csv(runs_csv)

    main_block = [f"- {line}" for line in meta] + [""]
    main_block += ["Session mode (`pgbench -S`, median of rounds):", ""] + session_table(runs)

    tx_block = ["Transaction mode (`pgbench -S`, median of rounds):", ""]
    summary = tps_summary(runs)
    if summary:
        tx_block += ["TPS by protocol (details below):", ""] + summary + [""]
    tx_block += transaction_table(runs)
    if chart and os.path.exists(chart):
        rel = os.path.relpath(chart, os.path.dirname(os.path.abspath(readme)))
        tx_block += ["", f"![TPS and proxy CPU per transaction by client count, transaction mode]({rel})"]
    else:
        tx_block += ["", "No chart this run: matplotlib was not available and could not be installed with pip."]

    idle_block = ["Memory per idle client (logged in, no server held), fresh proxy instances:", ""]
    idle_block += idle_table(read_csv(idle_csv))

    try:
        with open(readme) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    text = replace_block(text, "results", main_block)
    text = replace_block(text, "results-transaction", tx_block)
    text = replace_block(text, "results-idle", idle_block)
    with open(readme, "w") as f:
        f.write(text)
    print("\n".join(main_block + [""] + tx_block + [""] + idle_block))


if __name__ == "__main__":
    main()
