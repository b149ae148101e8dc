# Shared by bench/run.sh and bench/storm.sh: a throwaway PostgreSQL and the two proxies in
# front of it. Source it after setting PG_BIN, ROOT, PGWARDEN_BIN, POOL_SIZE and
# MAX_CLIENT_CONN; then call setup_workdir. Optional hooks:
#   LOG_TAG             prefix of log lines [bench]
#   PG_MAX_CONNECTIONS  the throwaway PostgreSQL's max_connections [300]
#   SHARED_BUFFERS      its shared_buffers [128MB]
#   SCALE               pgbench -i scale factor; 0 for no pgbench data [0]
#   PGWARDEN_ARGS       array: extra pgwarden flags
#   PGBOUNCER_INI       extra lines for pgbouncer.ini's [pgbouncer] section
#   AUTH_TYPE           the proxies' client authentication, read when each starts [trust]
#   PASSWORD            if set, user postgres' password: PostgreSQL then asks for it
#                       (scram-sha-256 over TCP), and the proxies log in and check
#                       clients with it; unset, everything is trust
#   PGBOUNCER_SECRET    what PgBouncer's userlist holds instead of PASSWORD (a SCRAM secret)
# shellcheck shell=bash

log() { printf '[%s %s] %s\n' "${LOG_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }
# initdb, postgres and pgbouncer refuse to run as root.
as_postgres() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Creates WORK, a temporary directory removed at exit (unless KEEP_WORKDIR=1), and stops
# everything in PIDS and the PostgreSQL in WORK at exit, also on Ctrl-C.
setup_workdir() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgwarden-bench.XXXXXX")"
    if is_root; then chown postgres: "$WORK"; fi
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -f "$WORK/data/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
# Drops pid $1 from PIDS once it has been waited for, so cleanup never signals a reused pid.
forget_pid() {
    local pid keep=()
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

build_pgwarden() {
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "building pgwarden (cargo build --release)"
        (cd "$ROOT" && cargo build --release) >"$WORK/build.log" 2>&1 || {
            log "pgwarden build failed (tail of $WORK/build.log):"; tail -n 20 "$WORK/build.log" >&2; return 1
        }
    fi
    [ -x "$PGWARDEN_BIN" ] || { log "no pgwarden binary at $PGWARDEN_BIN"; return 1; }
    # Others may rebuild target/ while this runs: every instance runs this copy. What the
    # work tree held when it was copied goes into the README.
    cp "$PGWARDEN_BIN" "$WORK/pgwarden"
    BUILT_FROM=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
    local dirty
    dirty=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | awk '{ print $2 }' | paste -sd ' ' -)
    [ -z "$dirty" ] || BUILT_FROM+=" plus uncommitted changes to $dirty"
    PGWARDEN_BIN="$WORK/pgwarden"
}

install_pgbouncer() {
    command -v pgbouncer >/dev/null && return 0
    log "installing PgBouncer (apt-get)"
    local sudo=""; is_root || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q pgbouncer >/dev/null
}

auth_type() { echo "${AUTH_TYPE:-trust}"; }

start_postgres() {
    PGPORT_=$(free_port)
    log "starting PostgreSQL on 127.0.0.1:$PGPORT_ ($("$PG_BIN/postgres" --version))"
    as_postgres "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync \
        --no-instructions --locale=C -E UTF8 >"$WORK/initdb.log"
    cat >>"$WORK/data/postgresql.conf" <<PGCONF
listen_addresses = '127.0.0.1'
max_connections = ${PG_MAX_CONNECTIONS:-300}
shared_buffers = ${SHARED_BUFFERS:-128MB}
fsync = off
synchronous_commit = off
full_page_writes = off
autovacuum = off
log_min_messages = warning
PGCONF
    mkdir -p "$WORK/sock"
    if is_root; then chown postgres: "$WORK/sock"; fi
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w -t 60 \
        -o "-p $PGPORT_ -k $WORK/sock" start >/dev/null
    if [ -n "${PASSWORD:-}" ]; then
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT_" -U postgres -d postgres \
            -c "ALTER USER postgres PASSWORD '$PASSWORD'" >/dev/null
        sed -i 's/^\(host.*\)trust$/\1scram-sha-256/' "$WORK/data/pg_hba.conf"
        as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" reload >/dev/null
        export PGPASSWORD=$PASSWORD
    fi
    if [ "${SCALE:-0}" -gt 0 ]; then
        log "pgbench -i -s $SCALE"
        "$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT_" -U postgres postgres \
            >"$WORK/pgbench-init.log" 2>&1
    fi
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

# An instance is a proxy in a pool mode, named e.g. pgwarden_transaction; its port and pid
# are PORT_<name> and PID_<name>. start_<proxy> NAME POOL_MODE starts one under that name.
start_pgwarden() {
    local name=$1 pool_mode=$2 port pid upstream="postgres://postgres@127.0.0.1:$PGPORT_"
    [ -x "$PGWARDEN_BIN" ] || { log "no pgwarden binary"; return 1; }
    [ -z "${PASSWORD:-}" ] || upstream="postgres://postgres:$PASSWORD@127.0.0.1:$PGPORT_"
    port=$(free_port)
    log "starting pgwarden ($pool_mode) on 127.0.0.1:$port"
    "$PGWARDEN_BIN" --listen "127.0.0.1:$port" \
        --upstream "$upstream" --auth-type "$(auth_type)" \
        --pool-size "$POOL_SIZE" --pool-mode "$pool_mode" --max-client-conn "$MAX_CLIENT_CONN" \
        --log-level warn ${PGWARDEN_ARGS[@]+"${PGWARDEN_ARGS[@]}"} >"$WORK/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    eval "PID_$name=$pid"
    wait_query "$port" "$pid" || {
        log "pgwarden did not start (tail of $WORK/$name.log):"; tail -n 20 "$WORK/$name.log" >&2; return 1
    }
    eval "PORT_$name=$port"
}

start_pgbouncer() {
    local name=$1 pool_mode=$2 port pid dir="$WORK/$1"
    port=$(free_port)
    mkdir -p "$dir"
    echo "\"postgres\" \"${PGBOUNCER_SECRET:-${PASSWORD:-}}\"" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$PGPORT_

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = $(auth_type)
auth_file = $dir/userlist.txt
pool_mode = $pool_mode
default_pool_size = $POOL_SIZE
max_client_conn = $MAX_CLIENT_CONN
logfile = $dir/pgbouncer.log
log_connections = 0
log_disconnections = 0
${PGBOUNCER_INI:-}
INI
    is_root && chown -R postgres: "$dir"
    log "starting PgBouncer ($pool_mode) on 127.0.0.1:$port"
    # As root, -u drops to postgres itself, so $! is PgBouncer's own pid.
    if is_root; then pgbouncer -u postgres "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
    else pgbouncer "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
    fi
    pid=$!
    PIDS+=("$pid")
    eval "PID_$name=$pid"
    wait_query "$port" "$pid" || {
        log "PgBouncer did not start:"; tail -n 20 "$dir/pgbouncer.log" "$dir/stdout.log" >&2; return 1
    }
    eval "PORT_$name=$port"
}

# Stops instance $1.
stop_instance() {
    local pid
    pid=$(eval echo "\${PID_$1:-}")
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    eval "PORT_$1=" "PID_$1="
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo ""; }

# Raises `ulimit -n` to 65,536, or the hard limit if that is lower.
raise_nofile() { ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }
