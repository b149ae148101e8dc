#!/usr/bin/env bash
# A quiet application beside a flooding one, through pgwarden and PgBouncer: how long does
# the quiet one wait per query while the flood keeps every server busy?
#
#   bench/fairness.sh                    # about 1 minute
#   FLOOD_CLIENTS=400 bench/fairness.sh
#
# It builds pgwarden (release), installs PgBouncer if missing, starts a throwaway
# PostgreSQL 15 and, in turn, each proxy in transaction mode with the same pool size. For
# each: FLOOD_CLIENTS pgbench clients with application_name "flood" run
# `SELECT pg_sleep(FLOOD_SLEEP_MS / 1000)` back to back (so the pool is always full and
# clients queue); after WARMUP seconds one pgbench client with application_name "quiet"
# runs `SELECT 1` for QUIET_SECONDS, logging every transaction's latency. Reported: the
# quiet client's latency p50 / p90 / p99 / max and its transactions, and the flood's TPS.
# pgwarden serves waiting clients round-robin across client identities (application_name
# by default); PgBouncer serves them first come, first served. The table goes into
# bench/README.md between `<!-- fairness:start -->` and `<!-- fairness:end -->`.
#
# Environment (defaults in brackets):
#   FLOOD_CLIENTS   flooding clients [200]
#   FLOOD_SLEEP_MS  each flood query's pg_sleep in milliseconds [10]
#   QUIET_SECONDS   how long the quiet client runs [10]
#   WARMUP          seconds of flood before the quiet client starts [3]
#   POOL_SIZE       server connections per pool, both proxies [20]
set -euo pipefail

FLOOD_CLIENTS=${FLOOD_CLIENTS:-200}
FLOOD_SLEEP_MS=${FLOOD_SLEEP_MS:-10}
QUIET_SECONDS=${QUIET_SECONDS:-10}
WARMUP=${WARMUP:-3}
POOL_SIZE=${POOL_SIZE:-20}
# shellcheck disable=SC2034 # read by lib.sh
MAX_CLIENT_CONN=$((FLOOD_CLIENTS + 100))
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PGWARDEN_BIN=${PGWARDEN_BIN:-$TARGET_DIR/release/pgwarden}
README=${README:-$BENCH_DIR/README.md}
# shellcheck disable=SC2034 # read by lib.sh
LOG_TAG=fairness

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
setup_workdir
raise_nofile
build_pgwarden
install_pgbouncer
start_postgres
printf 'SELECT pg_sleep(%s);\n' "$(python3 -c "print($FLOOD_SLEEP_MS / 1000)")" >"$WORK/flood.sql"
printf 'SELECT 1;\n' >"$WORK/quiet.sql"

# Runs the flood and the quiet client through proxy instance $1; prints one table row.
measure() {
    local name=$1 port flood_pid
    eval "port=\$PORT_$name"
    local total=$((WARMUP + QUIET_SECONDS + 2))
    PGAPPNAME=flood "$PG_BIN/pgbench" -n -f "$WORK/flood.sql" -c "$FLOOD_CLIENTS" -j 2 \
        -T "$total" -h 127.0.0.1 -p "$port" -U postgres postgres >"$WORK/$name-flood.out" 2>&1 &
    flood_pid=$!
    sleep "$WARMUP"
    mkdir -p "$WORK/$name-quiet"
    (cd "$WORK/$name-quiet" && PGAPPNAME=quiet "$PG_BIN/pgbench" -n -f "$WORK/quiet.sql" \
        -c 1 -T "$QUIET_SECONDS" -l -h 127.0.0.1 -p "$port" -U postgres postgres \
        >"$WORK/$name-quiet.out" 2>&1)
    wait "$flood_pid" || true
    python3 - "$name" "$WORK/$name-quiet" "$WORK/$name-flood.out" <<'PY'
import glob, re, sys
name, logs, flood = sys.argv[1:4]
lat = sorted(int(line.split()[2]) for f in glob.glob(logs + "/pgbench_log.*") for line in open(f))
tps = re.search(r"tps = ([0-9.]+) \(without", open(flood).read())
def pct(q):
    return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
print(f"| {name.split('_')[0]} | {len(lat):,} | {pct(0.5):.1f} | {pct(0.9):.1f} | "
      f"{pct(0.99):.1f} | {lat[-1] / 1000 if lat else float('nan'):.1f} | "
      f"{float(tps.group(1)) if tps else float('nan'):,.0f} |")
PY
}

rows=()
for proxy in pgwarden pgbouncer; do
    "start_$proxy" "${proxy}_tx" transaction
    log "$proxy: $FLOOD_CLIENTS flooding clients, then one quiet client for ${QUIET_SECONDS}s"
    rows+=("$(measure "${proxy}_tx")")
    stop_instance "${proxy}_tx"
done

table=$(
    echo "- Run: $(date -u '+%Y-%m-%d %H:%M UTC'), pgwarden built from commit $(git -C "$ROOT" rev-parse --short HEAD); command: \`bench/fairness.sh\`"
    echo "- Transaction mode, pool size $POOL_SIZE; flood: $FLOOD_CLIENTS clients (application_name \"flood\") running \`SELECT pg_sleep($FLOOD_SLEEP_MS ms)\` back to back; quiet: 1 client (\"quiet\") running \`SELECT 1\` for ${QUIET_SECONDS}s"
    echo
    echo "| proxy | quiet transactions | quiet latency p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | flood TPS |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
)
printf '%s\n' "$table" >&2
python3 - "$README" "$table" <<'PY'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
start, end = "<!-- fairness:start -->", "<!-- fairness:end -->"
block = f"{start}\n\n{table}\n\n{end}"
if start in text:
    head, rest = text.split(start, 1)
    text = head + block + rest.split(end, 1)[1]
else:
    text += f"\n## A quiet application beside a flood\n\n{block}\n"
open(path, "w").write(text)
PY
log "results written to $README"
