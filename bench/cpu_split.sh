#!/usr/bin/env bash
# Where a proxy's CPU per transaction goes: user time (the proxy's own code) and system time
# (the kernel's socket work), for pgwarden as built now, optionally another pgwarden build
# (say, the commit before a change), and PgBouncer, in transaction mode, in one run.
#
#   bench/cpu_split.sh                                   # this build against PgBouncer
#   BASELINE=4eab6ea bench/cpu_split.sh                  # ... and against commit 4eab6ea
#   BASELINE_BIN=/path/to/pgwarden bench/cpu_split.sh    # ... or against a binary
#
# Each round runs `pgbench -S` (-M MODE) for DURATION seconds at each of CLIENTS against
# every target in turn (the order rotates between rounds) and reads the proxy's utime and
# stime from /proc before and after. It prints one line per run and the medians; it writes
# nothing else. A baseline commit is built in a temporary git worktree (release mode).
#
# Environment (defaults in brackets): DURATION [8], ROUNDS [3], CLIENTS ["10 100 1000"],
# MODE [simple], POOL_SIZE [20], MAX_CLIENT_CONN [2000], SCALE [10], PG_BIN, PGWARDEN_BIN,
# SKIP_BUILD (as bench/run.sh), BASELINE (a commit), BASELINE_BIN (a binary).
set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-10 100 1000}
MODE=${MODE:-simple}
POOL_SIZE=${POOL_SIZE:-20}
MAX_CLIENT_CONN=${MAX_CLIENT_CONN:-2000}
SCALE=${SCALE:-10}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
PGWARDEN_BIN=${PGWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pgwarden}
LOG_TAG=cpu

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
setup_workdir
raise_nofile

build_pgwarden
TARGETS=(pgwarden)
if [ -n "${BASELINE:-}" ]; then
    log "building the baseline $BASELINE (git worktree, cargo build --release)"
    git -C "$ROOT" worktree add --detach -f "$WORK/baseline-src" "$BASELINE" >/dev/null 2>&1
    (cd "$WORK/baseline-src" && CARGO_TARGET_DIR="$WORK/baseline-target" cargo build --release) \
        >"$WORK/baseline-build.log" 2>&1 || { log "baseline build failed: see $WORK/baseline-build.log"; exit 1; }
    BASELINE_BIN="$WORK/baseline-target/release/pgwarden"
    trap 'git -C "$ROOT" worktree remove --force "$WORK/baseline-src" >/dev/null 2>&1 || true; cleanup' EXIT
fi
install_pgbouncer || log "PgBouncer could not be installed"
start_postgres

start_pgwarden pgwarden transaction
if [ -n "${BASELINE_BIN:-}" ]; then
    NEW_BIN=$PGWARDEN_BIN
    PGWARDEN_BIN=$BASELINE_BIN start_pgwarden baseline transaction
    PGWARDEN_BIN=$NEW_BIN
    TARGETS+=(baseline)
fi
if command -v pgbouncer >/dev/null; then
    start_pgbouncer pgbouncer transaction
    TARGETS+=(pgbouncer)
fi

CLK_TCK=$(getconf CLK_TCK)
RESULTS="$WORK/results"
: >"$RESULTS"
times() { awk '{ print $14, $15 }' "/proc/$1/stat"; }

for round in $(seq 1 "$ROUNDS"); do
    for clients in $CLIENTS; do
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            target=${TARGETS[$(((i + round - 1) % n))]}
            pid=$(eval echo "\$PID_$target")
            port=$(eval echo "\$PORT_$target")
            read -r u0 s0 < <(times "$pid")
            tx=$("$PG_BIN/pgbench" -S -n -M "$MODE" -c "$clients" -j 2 -T "$DURATION" \
                -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1 |
                awk '/number of transactions actually processed/ { split($6, a, "/"); print a[1] }')
            read -r u1 s1 < <(times "$pid")
            [ -n "$tx" ] && [ "$tx" -gt 0 ] || { log "$target at $clients clients: no transactions"; continue; }
            line=$(awk -v t="$target" -v c="$clients" -v n="$tx" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$CLK_TCK" \
                'BEGIN { printf "%s %d %.2f %.2f %.2f", t, c, u*1e6/hz/n, s*1e6/hz/n, (u+s)*1e6/hz/n }')
            echo "$line" >>"$RESULTS"
            log "round $round: $line (target clients user_us sys_us total_us per tx)"
        done
    done
done

echo
echo "Median CPU per transaction (µs), transaction mode, pgbench -S -M $MODE, pool $POOL_SIZE, $ROUNDS rounds of ${DURATION}s:"
echo
echo "| clients | target | user | system | total |"
echo "| ---: | --- | ---: | ---: | ---: |"
for clients in $CLIENTS; do
    for target in "${TARGETS[@]}"; do
        awk -v t="$target" -v c="$clients" '$1 == t && $2 == c { u[n] = $3; s[n] = $4; x[n] = $5; n++ }
            function med(a, n,   i, j, v) {
                for (i = 1; i < n; i++) { v = a[i]; for (j = i - 1; j >= 0 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
                return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
            }
            END { if (n) printf "| %d | %s | %.1f | %.1f | %.1f |\n", c, t, med(u, n), med(s, n), med(x, n) }' "$RESULTS"
    done
done
