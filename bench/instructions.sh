#!/usr/bin/env bash
# Instructions pgwarden executes per transaction, counted by valgrind's callgrind: unlike
# CPU time, the count is the same from run to run whatever else the machine does, so a
# change to the relay can be compared with the commit before it exactly.
#
#   bench/instructions.sh                                  # this build
#   BASELINE_BIN=/path/to/old/pgwarden bench/instructions.sh   # ... and another binary
#   MODES="simple extended prepared" CLIENTS=10 TX=1000 bench/instructions.sh
#
# For each binary and each pgbench mode: pgwarden (transaction mode, pool 20) runs under
# callgrind; pgbench -S warms it up (logins, first statements), the counters are zeroed,
# pgbench runs CLIENTS x TX transactions, and the counters are dumped. The count covers the
# whole process (tokio, the relay, the pool), user space only: system calls are not in it
# (see bench/cpu_split.sh for the system time). Profiles are kept in KEEP (if set) for
# `callgrind_annotate`.
#
# Environment (defaults in brackets): MODES ["simple extended prepared"], CLIENTS [10],
# TX [1000, per client], SCALE [10], PG_BIN, PGWARDEN_BIN, SKIP_BUILD, BASELINE_BIN, KEEP.
set -euo pipefail

MODES=${MODES:-simple extended prepared}
CLIENTS=${CLIENTS:-10}
TX=${TX:-1000}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
MAX_CLIENT_CONN=${MAX_CLIENT_CONN:-2000}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
PGWARDEN_BIN=${PGWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pgwarden}
LOG_TAG=instructions

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
setup_workdir
build_pgwarden
start_postgres

BINS=("build:$PGWARDEN_BIN")
[ -z "${BASELINE_BIN:-}" ] || BINS+=("baseline:$BASELINE_BIN")

count() {
    local name=$1 bin=$2 mode=$3 port pid out="$WORK/$1-$3.cg"
    port=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --listen "127.0.0.1:$port" \
        --upstream "postgres://postgres@127.0.0.1:$PGPORT_" --auth-type trust \
        --pool-size "$POOL_SIZE" --pool-mode transaction --max-client-conn "$MAX_CLIENT_CONN" \
        --log-level warn >"$WORK/$name-$mode.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    local deadline=$((SECONDS + 60))
    until "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { log "$name did not start under valgrind"; return 1; }
        sleep 0.5
    done
    "$PG_BIN/pgbench" -S -n -M "$mode" -c "$CLIENTS" -j 2 -t 200 -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
    callgrind_control -z "$pid" >/dev/null
    "$PG_BIN/pgbench" -S -n -M "$mode" -c "$CLIENTS" -j 2 -t "$TX" -h 127.0.0.1 -p "$port" -U postgres postgres >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    local total
    total=$(awk '/^summary:/ { print $2 }' "$out".1)
    awk -v n="$name" -v m="$mode" -v t="$total" -v tx=$((CLIENTS * TX)) \
        'BEGIN { printf "| %s | %s | %d |\n", n, m, t / tx }'
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out".1 "$KEEP/$name-$mode.callgrind"; fi
}

echo "Instructions per transaction (callgrind), transaction mode, pgbench -S, $CLIENTS clients x $TX:"
echo
echo "| binary | mode | instructions per transaction |"
echo "| --- | --- | ---: |"
for mode in $MODES; do
    for entry in "${BINS[@]}"; do
        count "${entry%%:*}" "${entry#*:}" "$mode"
    done
done
