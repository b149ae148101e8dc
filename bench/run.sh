#!/usr/bin/env bash
# Benchmarks pgwarden against direct PostgreSQL and PgBouncer, in one run, on this machine.
#
#   bench/run.sh                      # defaults below; takes about 6 minutes
#   ROUNDS=1 DURATION=3 bench/run.sh  # a quick check
#
# It builds pgwarden (release), installs PgBouncer if missing (apt-get), starts a throwaway
# PostgreSQL 15 with pgbench data, starts pgwarden and PgBouncer in front of it with the
# same pool settings, then runs `pgbench -S` (select-only) with the simple and extended
# protocols against each target, alternating targets across rounds. It records TPS,
# average latency, the proxy's CPU time per transaction and its RSS, then the proxy's
# memory per idle client, and writes the medians into bench/README.md between the
# results markers (raw numbers: bench/last-run.csv, bench/last-idle.csv).
#
# Environment (defaults in brackets):
#   DURATION      seconds per pgbench run [15]
#   CLIENTS       pgbench clients (-c) [10]
#   THREADS       pgbench threads (-j) [2]
#   ROUNDS        rounds over every target and protocol; results are medians [3]
#   SCALE         pgbench scale factor (-s) [10]
#   POOL_SIZE     server connections per pool, both proxies [20]
#   IDLE_CLIENTS  idle clients opened to measure memory per client [1000]
#   SHARED_BUFFERS  PostgreSQL shared_buffers; large enough for the data set [256MB]
#   PG_BIN        PostgreSQL binaries [/usr/lib/postgresql/15/bin]
#   PGWARDEN_BIN  pgwarden binary [$CARGO_TARGET_DIR or target, /release/pgwarden]
#   SKIP_BUILD    set to 1 to use PGWARDEN_BIN as it is
#   README        where the results go [bench/README.md]
#   KEEP_WORKDIR  set to 1 to keep the temporary directory (logs) after the run
set -euo pipefail

DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-10}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
SHARED_BUFFERS=${SHARED_BUFFERS:-256MB}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
PGWARDEN_BIN=${PGWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pgwarden}
README=${README:-$BENCH_DIR/README.md}
MODES=(simple extended)
TARGETS=(direct pgwarden pgbouncer)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }
# initdb, postgres and pgbouncer refuse to run as root.
as_postgres() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgwarden-bench.XXXXXX")"
is_root && chown postgres: "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -f "$WORK/data/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup

build_pgwarden() {
    [ "${SKIP_BUILD:-0}" = 1 ] && return 0
    log "building pgwarden (cargo build --release)"
    (cd "$ROOT" && cargo build --release) >"$WORK/build.log" 2>&1 || {
        log "pgwarden build failed (tail of $WORK/build.log):"; tail -n 20 "$WORK/build.log" >&2; return 1
    }
}

install_pgbouncer() {
    command -v pgbouncer >/dev/null && return 0
    log "installing PgBouncer (apt-get)"
    local sudo=""; is_root || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q pgbouncer >/dev/null
}

start_postgres() {
    PGPORT_=$(free_port)
    log "starting PostgreSQL on 127.0.0.1:$PGPORT_ ($("$PG_BIN/postgres" --version))"
    as_postgres "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync \
        --no-instructions --locale=C -E UTF8 >"$WORK/initdb.log"
    cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = $SHARED_BUFFERS
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
log_min_messages = warning
EOF
    mkdir -p "$WORK/sock" && { is_root && chown postgres: "$WORK/sock" || true; }
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 \
        -o "-p $PGPORT_ -k $WORK/sock" start >/dev/null
    log "pgbench -i -s $SCALE"
    "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT_" -U postgres postgres \
        >"$WORK/pgbench-init.log" 2>&1
}

# Waits until a query works through 127.0.0.1:$1 (deadline 15 s) while process $2 lives.
wait_query() {
    local deadline=$((SECONDS + 15))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$2" 2>/dev/null || return 1
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -c 'SELECT 1' \
            >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

start_pgwarden() {
    [ -x "$PGWARDEN_BIN" ] || { log "no pgwarden binary at $PGWARDEN_BIN"; return 1; }
    PORT_pgwarden=$(free_port)
    log "starting pgwarden on 127.0.0.1:$PORT_pgwarden"
    "$PGWARDEN_BIN" --listen "127.0.0.1:$PORT_pgwarden" \
        --upstream "postgres://postgres@127.0.0.1:$PGPORT_" --auth-type trust \
        --pool-size "$POOL_SIZE" --pool-mode session --max-client-conn 2000 \
        --log-level warn >"$WORK/pgwarden.log" 2>&1 &
    PID_pgwarden=$!
    PIDS+=("$PID_pgwarden")
    wait_query "$PORT_pgwarden" "$PID_pgwarden" || {
        log "pgwarden did not start (tail of $WORK/pgwarden.log):"; tail -n 20 "$WORK/pgwarden.log" >&2; return 1
    }
}

start_pgbouncer() {
    PORT_pgbouncer=$(free_port)
    local dir="$WORK/pgbouncer"
    mkdir -p "$dir"
    echo '"postgres" ""' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PGPORT_

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT_pgbouncer
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
default_pool_size = $POOL_SIZE
max_client_conn = 2000
logfile = $dir/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    is_root && chown -R postgres: "$dir"
    log "starting PgBouncer on 127.0.0.1:$PORT_pgbouncer ($(pgbouncer --version | head -n 1))"
    # As root, -u drops to postgres itself, so $! is PgBouncer's own pid.
    if is_root; then pgbouncer -u postgres "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
    else pgbouncer "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
    fi
    PID_pgbouncer=$!
    PIDS+=("$PID_pgbouncer")
    wait_query "$PORT_pgbouncer" "$PID_pgbouncer" || {
        log "PgBouncer did not start:"; tail -n 20 "$dir/pgbouncer.log" "$dir/stdout.log" >&2; return 1
    }
}

# ---------------------------------------------------------------- measuring

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo ""; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }

# One pgbench run; appends a CSV row: round,target,mode,status,tps,latency,transactions,cpu,rss
bench_one() {
    local round=$1 target=$2 mode=$3 port pid="" before="" after out status=ok
    port=$(eval echo "\${PORT_$target:-}")
    [ "$target" = direct ] || pid=$(eval echo "\${PID_$target:-}")
    if [ -z "$port" ]; then
        echo "$round,$target,$mode,$(eval echo "\${DOWN_$target:-failed to start}"),,,,," >>"$RUNS_CSV"; return
    fi
    if [ -n "$pid" ]; then before=$(cpu_ticks "$pid"); fi
    out="$WORK/pgbench-$round-$target-$mode.log"
    "$PG_BIN/pgbench" -S -n -T "$DURATION" -c "$CLIENTS" -j "$THREADS" -M "$mode" \
        -h 127.0.0.1 -p "$port" -U postgres postgres >"$out" 2>&1 || status=failed
    local tps lat tx cpu="-" rss="-"
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    [ -n "$tps" ] && [ -n "$tx" ] && [ "$tx" -gt 0 ] || status=failed
    if [ -n "$pid" ]; then
        after=$(cpu_ticks "$pid"); rss=$(rss_kib "$pid")
        if [ -z "$after" ]; then status="died"; mark_dead "$target"; fi
        if [ "$status" = ok ]; then
            cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$tx" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        fi
    fi
    [ "$status" = ok ] || { log "$target/$mode round $round: $status"; tail -n 5 "$out" >&2; }
    log "$target/$mode round $round: tps=${tps:-?} latency=${lat:-?}ms cpu/tx=${cpu}us rss=${rss}KiB"
    echo "$round,$target,$mode,$status,$tps,$lat,$tx,$cpu,$rss" >>"$RUNS_CSV"
}

# A proxy that died is not run again; its later runs say so.
mark_dead() { eval "PORT_$1="; eval "DOWN_$1=died"; }

# RSS of proxy $1 before and after IDLE_CLIENTS idle clients log in through it.
idle_one() {
    local target=$1 port pid before after opener status=ok
    port=$(eval echo "\${PORT_$target:-}"); pid=$(eval echo "\${PID_$target:-}")
    if [ -z "$port" ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "$target,not running,$IDLE_CLIENTS,," >>"$IDLE_CSV"; return
    fi
    before=$(rss_kib "$pid")
    python3 "$BENCH_DIR/idle_clients.py" 127.0.0.1 "$port" "$IDLE_CLIENTS" postgres postgres \
        >"$WORK/idle-$target.log" 2>&1 &
    opener=$!
    PIDS+=("$opener")
    local deadline=$((SECONDS + 120))
    until grep -q '^ready' "$WORK/idle-$target.log" 2>/dev/null; do
        if ! kill -0 "$opener" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            status="$(tr -d ',' <"$WORK/idle-$target.log" | tail -n 1)"
            [ -n "$status" ] || status="failed: opener gave no answer"
            break
        fi
        sleep 0.2
    done
    sleep 1 # let the proxy settle after the last login
    after=$(rss_kib "$pid")
    kill "$opener" 2>/dev/null || true
    wait "$opener" 2>/dev/null || true
    log "$target: RSS ${before} KiB -> ${after} KiB with $IDLE_CLIENTS idle clients ($status)"
    echo "$target,$status,$IDLE_CLIENTS,$before,$after" >>"$IDLE_CSV"
}

write_meta() {
    local commit pgb
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
    pgb=$(pgbouncer --version 2>/dev/null | head -n 1 || echo "not installed")
    {
        echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), pgwarden commit $commit"
        echo "Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
        echo "Versions: $("$PG_BIN/postgres" --version), $pgb"
        echo "Parameters: pgbench -S -T $DURATION -c $CLIENTS -j $THREADS, scale $SCALE, $ROUNDS rounds, pool size $POOL_SIZE (session mode), $IDLE_CLIENTS idle clients"
    } >"$WORK/meta.txt"
}

# ---------------------------------------------------------------- main

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
RUNS_CSV="$BENCH_DIR/last-run.csv"
IDLE_CSV="$BENCH_DIR/last-idle.csv"
echo "round,target,mode,status,tps,latency_ms,transactions,cpu_us_per_tx,rss_kib" >"$RUNS_CSV"
echo "target,status,clients,rss_before_kib,rss_after_kib" >"$IDLE_CSV"

PORT_pgwarden="" PORT_pgbouncer="" PID_pgwarden="" PID_pgbouncer=""
build_ok=1
build_pgwarden || build_ok=0
install_pgbouncer || log "PgBouncer could not be installed"
start_postgres
# shellcheck disable=SC2034 # read through eval in bench_one
PORT_direct=$PGPORT_
if [ $build_ok = 1 ]; then start_pgwarden || PORT_pgwarden=""; fi
if command -v pgbouncer >/dev/null; then start_pgbouncer || PORT_pgbouncer=""; fi

for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round so no target always runs first (cold) or last.
    offset=$(((round - 1) % ${#TARGETS[@]}))
    order=("${TARGETS[@]:offset}" "${TARGETS[@]:0:offset}")
    for mode in "${MODES[@]}"; do
        for target in "${order[@]}"; do bench_one "$round" "$target" "$mode"; done
    done
done

idle_one pgwarden
idle_one pgbouncer

write_meta
python3 "$BENCH_DIR/report.py" "$RUNS_CSV" "$IDLE_CSV" "$WORK/meta.txt" "$README"
log "results written to $README"
