#!/usr/bin/env bash
# Benchmarks pgwarden against direct PostgreSQL and PgBouncer, in one run, on this machine.
#
#   bench/run.sh                                  # defaults below; about 25 minutes
#   DURATION=10 ROUNDS=2 bench/run.sh             # what the README's figures come from; about 12 minutes
#   ROUNDS=1 DURATION=3 TX_CLIENTS="10 100" bench/run.sh   # a quick check
#
# It builds pgwarden (release), installs PgBouncer if missing (apt-get), starts a throwaway
# PostgreSQL 15 with pgbench data, and in front of it pgwarden and PgBouncer, each twice:
# once in session mode and once in transaction mode, all four with the same pool size.
# Then, alternating targets within each round (the order rotates between rounds):
#
#   1. session mode: `pgbench -S` with -M simple, extended and prepared at CLIENTS clients;
#   2. transaction mode: `pgbench -S` with -M simple, extended and prepared at each of
#      TX_CLIENTS (direct PostgreSQL only where the client count fits its max_connections).
#      PgBouncer 1.18 has no prepared statements in transaction mode: its -M prepared runs
#      fail, and are recorded as failed with the first error pgbench printed.
#
# Each run records TPS (without initial connection time), average latency, the proxy's CPU
# time per transaction and its RSS. Then fresh proxy instances, one per proxy and pool mode,
# measure memory per idle logged-in client (bench/idle_clients.py). The medians go into
# bench/README.md between its markers, raw numbers into bench/last-run.csv and
# bench/last-idle.csv, a chart into bench/tx-mode.png (if matplotlib is, or can be pip-
# installed), and any warning or error pgwarden logged into bench/last-pgwarden.log.
#
# Environment (defaults in brackets):
#   DURATION      seconds per pgbench run [15]
#   CLIENTS       pgbench clients (-c) in session mode [10]
#   TX_CLIENTS    pgbench client counts in transaction mode ["10 100 1000"]
#   THREADS       pgbench threads (-j) [2]
#   ROUNDS        rounds over every target, protocol and client count; results are medians [3]
#   SCALE         pgbench scale factor (-s) [10]
#   POOL_SIZE     server connections per pool, both proxies, both pool modes [20]
#   MAX_CLIENT_CONN  client connections each proxy accepts [2000]
#   PG_MAX_CONNECTIONS  the throwaway PostgreSQL's max_connections [300]
#   IDLE_CLIENTS  idle clients opened to measure memory per client [1000]
#   SHARED_BUFFERS  PostgreSQL shared_buffers; large enough for the data set [256MB]
#   PG_BIN        PostgreSQL binaries [/usr/lib/postgresql/15/bin]
#   PGWARDEN_BIN  pgwarden binary [$CARGO_TARGET_DIR or target, /release/pgwarden]; the run
#                 uses a copy, so a build by someone else during the run changes nothing
#   SKIP_BUILD    set to 1 to use PGWARDEN_BIN as it is
#   README        where the results go [bench/README.md]
#   KEEP_WORKDIR  set to 1 to keep the temporary directory (logs) after the run
#
# 1,000 clients need file descriptors in pgbench (one socket per client) as much as in the
# proxies: the script raises `ulimit -n` for itself and everything it starts.
set -euo pipefail

# The exact command, for the README: the parameters given in the environment.
PARAM_VARS=(DURATION CLIENTS TX_CLIENTS THREADS ROUNDS SCALE POOL_SIZE MAX_CLIENT_CONN
    PG_MAX_CONNECTIONS IDLE_CLIENTS SHARED_BUFFERS)
COMMAND=""
for v in "${PARAM_VARS[@]}"; do
    if [ -n "${!v+x}" ]; then
        case ${!v} in *' '*) COMMAND+="$v=\"${!v}\" " ;; *) COMMAND+="$v=${!v} " ;; esac
    fi
done
COMMAND+="bench/run.sh"

DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-10}
TX_CLIENTS=${TX_CLIENTS:-10 100 1000}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
MAX_CLIENT_CONN=${MAX_CLIENT_CONN:-2000}
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-300}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
SHARED_BUFFERS=${SHARED_BUFFERS:-256MB}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
PGWARDEN_BIN=${PGWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pgwarden}
README=${README:-$BENCH_DIR/README.md}
SESSION_MODES=(simple extended prepared)
TX_MODES=(simple extended prepared)
TARGETS=(direct pgwarden pgbouncer)
PROXIES=(pgwarden pgbouncer)
POOL_MODES=(session transaction)

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
setup_workdir

# ---------------------------------------------------------------- measuring

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo ""; }

# One pgbench run of round $1, phase $2 (session or transaction: which table, and which
# proxy instances), against target $3 (direct, pgwarden or pgbouncer), protocol $4, $5
# clients. Appends a CSV row: round,phase,target,clients,mode,status,tps,latency_ms,
# transactions,connection_ms,cpu_us_per_tx,rss_kib,error (error: a failed run's first error
# line from pgbench, quoted)
bench_one() {
    local round=$1 phase=$2 target=$3 mode=$4 clients=$5 instance port pid="" before="" after
    local out status=ok
    instance=$target; [ "$target" = direct ] || instance="${target}_$phase"
    local row="$round,$phase,$target,$clients,$mode"
    # Leave room for the proxies' pools (4 instances of POOL_SIZE) and reserved slots.
    if [ "$target" = direct ] && [ "$clients" -gt $((PG_MAX_CONNECTIONS - 5 * POOL_SIZE)) ]; then
        echo "$row,n/a (over max_connections),,,,,,," >>"$RUNS_CSV"; return
    fi
    port=$(eval echo "\${PORT_$instance:-}")
    [ "$target" = direct ] || pid=$(eval echo "\${PID_$instance:-}")
    if [ -z "$port" ]; then
        echo "$row,$(eval echo "\${DOWN_$instance:-failed to start}"),,,,,,," >>"$RUNS_CSV"; return
    fi
    if [ -n "$pid" ]; then before=$(cpu_ticks "$pid"); fi
    out="$WORK/pgbench-$round-$instance-$mode-$clients.log"
    "$PG_BIN/pgbench" -S -n -T "$DURATION" -c "$clients" -j "$THREADS" -M "$mode" \
        -h 127.0.0.1 -p "$port" -U postgres postgres >"$out" 2>&1 &
    local pgbench=$!
    PIDS+=("$pgbench")
    wait "$pgbench" || status=failed
    forget_pid "$pgbench"
    local tps lat tx conn cpu="-" rss="-"
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$out")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    conn=$(sed -n 's/^initial connection time = \([0-9.]*\) ms/\1/p' "$out")
    [ -n "$tps" ] && [ -n "$tx" ] && [ "$tx" -gt 0 ] || status=failed
    if [ -n "$pid" ]; then
        after=$(cpu_ticks "$pid"); rss=$(rss_kib "$pid")
        if [ -z "$after" ]; then status="died"; mark_dead "$instance"; fi
        if [ "$status" = ok ]; then
            cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$tx" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        fi
    fi
    local error=""
    if [ "$status" != ok ]; then
        log "$instance/$mode/c$clients round $round: $status"; grep -v '^progress' "$out" | tail -n 5 >&2
        # What failed, CSV-quoted: the first error that aborted a client, else the first
        # error pgbench printed, else its first line; without "pgbench: error: ".
        error=$({ grep -m 1 'aborted in command' "$out" || grep -m 1 -i 'error' "$out" ||
            grep -v -m 1 '^progress' "$out" || true; } | sed 's/^pgbench: error: //; s/  */ /g' | cut -c 1-300)
        error="\"${error//\"/\"\"}\""
    fi
    log "$instance/$mode/c$clients round $round: tps=${tps:-?} latency=${lat:-?}ms conn=${conn:-?}ms cpu/tx=${cpu}us rss=${rss}KiB"
    echo "$row,$status,$tps,$lat,$tx,$conn,$cpu,$rss,$error" >>"$RUNS_CSV"
}

# A proxy that died is not run again; its later runs say so.
mark_dead() { eval "PORT_$1="; eval "DOWN_$1=died"; }

# RSS of a fresh instance of proxy $1 in pool mode $2 before and after IDLE_CLIENTS idle
# clients log in through it. Fresh, so memory freed by earlier pgbench runs (which an
# allocator keeps and reuses) does not hide the cost of the idle clients.
idle_one() {
    local proxy=$1 pool_mode=$2 name="idle_$1_$2" port pid before after opener status=ok
    if ! "start_$proxy" "$name" "$pool_mode"; then
        echo "$proxy,$pool_mode,failed to start,$IDLE_CLIENTS,," >>"$IDLE_CSV"; return
    fi
    port=$(eval echo "\${PORT_$name}"); pid=$(eval echo "\${PID_$name}")
    sleep 1
    before=$(rss_kib "$pid")
    python3 "$BENCH_DIR/idle_clients.py" 127.0.0.1 "$port" "$IDLE_CLIENTS" postgres postgres \
        >"$WORK/idle-$proxy-$pool_mode.log" 2>&1 &
    opener=$!
    PIDS+=("$opener")
    local deadline=$((SECONDS + 120))
    until grep -q '^ready' "$WORK/idle-$proxy-$pool_mode.log" 2>/dev/null; do
        if ! kill -0 "$opener" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            status="$(tr -d ',' <"$WORK/idle-$proxy-$pool_mode.log" | tail -n 1)"
            [ -n "$status" ] || status="failed: opener gave no answer"
            break
        fi
        sleep 0.2
    done
    sleep 1 # let the proxy settle after the last login
    after=$(rss_kib "$pid")
    # Still all there? A proxy that closed them would show a misleadingly low figure.
    if [ "$status" = ok ] && ! kill -0 "$opener" 2>/dev/null; then status="opener exited early"; fi
    kill "$opener" 2>/dev/null || true
    wait "$opener" 2>/dev/null || true
    forget_pid "$opener"
    log "$proxy ($pool_mode): RSS ${before} KiB -> ${after} KiB with $IDLE_CLIENTS idle clients ($status)"
    echo "$proxy,$pool_mode,$status,$IDLE_CLIENTS,$before,$after" >>"$IDLE_CSV"
    stop_instance "$name"
}

write_meta() {
    local pgb
    pgb=$(pgbouncer --version 2>/dev/null | head -n 1 || echo "not installed")
    {
        echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), pgwarden built from commit ${BUILT_FROM:-none}"
        echo "Command: \`$COMMAND\`"
        echo "Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
        echo "Versions: $("$PG_BIN/postgres" --version), $pgb, $("$PG_BIN/pgbench" --version)"
        echo "Load average (1 min) at the start and the end of the run: $LOAD_START, $(cut -d' ' -f1 /proc/loadavg) (other work on the machine shows here)"
        echo "Parameters: pgbench -S -n -T $DURATION -j $THREADS; session mode -c $CLIENTS, transaction mode -c $TX_CLIENTS; scale $SCALE; $ROUNDS rounds; pool size $POOL_SIZE; max_client_conn $MAX_CLIENT_CONN; PostgreSQL max_connections $PG_MAX_CONNECTIONS; $IDLE_CLIENTS idle clients; ulimit -n $(ulimit -n)"
    } >"$WORK/meta.txt"
}

# Copies what pgwarden logged at warn level or above (it runs with --log-level warn, so any
# line is one) into bench/last-pgwarden.log, and says how much there was.
collect_pgwarden_logs() {
    local f n total=0 out="$BENCH_DIR/last-pgwarden.log"
    : >"$out"
    for f in "$WORK"/pgwarden_*.log "$WORK"/idle_pgwarden_*.log; do
        [ -f "$f" ] || continue
        n=$(grep -c . "$f" || true)
        [ "$n" -gt 0 ] || continue
        total=$((total + n))
        { echo "== $(basename "$f"): $n lines"; head -n 100 "$f"; [ "$n" -le 100 ] || echo "... ($((n - 100)) more)"; } >>"$out"
    done
    if [ "$total" -gt 0 ]; then log "pgwarden logged $total lines (warnings/errors): see $out"
    else log "pgwarden logged no warnings or errors"; fi
}

# ---------------------------------------------------------------- main

# pgbench opens one socket per client, the proxies one or two per client: 1,000 clients
# need more than the common default of 1,024 descriptors.
raise_nofile
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((MAX_CLIENT_CONN * 2 + 100)) ]; then
    log "warning: ulimit -n is $(ulimit -n); 1,000 clients may run out of file descriptors"
fi
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
RUNS_CSV="$BENCH_DIR/last-run.csv"
IDLE_CSV="$BENCH_DIR/last-idle.csv"
CHART="$BENCH_DIR/tx-mode.png"
echo "round,phase,target,clients,mode,status,tps,latency_ms,transactions,connection_ms,cpu_us_per_tx,rss_kib,error" >"$RUNS_CSV"
echo "target,pool_mode,status,clients,rss_before_kib,rss_after_kib" >"$IDLE_CSV"

build_ok=1
build_pgwarden || build_ok=0
install_pgbouncer || log "PgBouncer could not be installed"
start_postgres
# shellcheck disable=SC2034 # read through eval in bench_one
PORT_direct=$PGPORT_
for pool_mode in "${POOL_MODES[@]}"; do
    if [ $build_ok = 1 ]; then start_pgwarden "pgwarden_$pool_mode" "$pool_mode" || true; fi
    if command -v pgbouncer >/dev/null; then start_pgbouncer "pgbouncer_$pool_mode" "$pool_mode" || true; fi
done

for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round so no target always runs first (cold) or last.
    offset=$(((round - 1) % ${#TARGETS[@]}))
    order=("${TARGETS[@]:offset}" "${TARGETS[@]:0:offset}")
    for mode in "${SESSION_MODES[@]}"; do
        for target in "${order[@]}"; do
            bench_one "$round" session "$target" "$mode" "$CLIENTS"
        done
    done
    for clients in $TX_CLIENTS; do
        for mode in "${TX_MODES[@]}"; do
            for target in "${order[@]}"; do
                bench_one "$round" transaction "$target" "$mode" "$clients"
            done
        done
    done
done

# The benchmark instances are done: stop them before the idle measurement's fresh ones.
for pool_mode in "${POOL_MODES[@]}"; do
    for proxy in "${PROXIES[@]}"; do stop_instance "${proxy}_$pool_mode"; done
done
for pool_mode in "${POOL_MODES[@]}"; do
    if [ $build_ok = 1 ]; then idle_one pgwarden "$pool_mode"; fi
    if command -v pgbouncer >/dev/null; then idle_one pgbouncer "$pool_mode"; fi
done

collect_pgwarden_logs
write_meta
rm -f "$CHART"
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib (pip) for the chart"
    python3 -m pip install -q matplotlib >"$WORK/pip.log" 2>&1 || log "matplotlib could not be installed; no chart"
fi
python3 "$BENCH_DIR/chart.py" "$RUNS_CSV" "$CHART" || log "no chart (see above)"
python3 "$BENCH_DIR/report.py" "$RUNS_CSV" "$IDLE_CSV" "$WORK/meta.txt" "$README" "$CHART"
log "results written to $README"
