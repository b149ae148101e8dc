#!/usr/bin/env bash
# TLS cost: CPU per transaction and TPS of pgwarden (workers = 1 and workers = 2) and
# PgBouncer with TLS on the client side, on the server side, on both, and on neither, in
# transaction mode, against one PostgreSQL with `ssl = on`, in one run. Direct PostgreSQL
# over TLS and without is measured alongside.
#
#   bench/tls.sh                                 # defaults below; about 12 minutes
#   ROUNDS=1 DURATION=4 CLIENTS=10 bench/tls.sh  # a quick check
#
# Certificates are made with openssl in the run's temporary directory: a CA, and one
# certificate for 127.0.0.1/localhost used by PostgreSQL and by both proxies. Clients use
# sslmode=require (PGSSLMODE) where the client side is encrypted, sslmode=disable where not;
# the proxies use server_tls_sslmode = require where the server side is encrypted and disable
# where not. Results (medians) go to stdout as a Markdown table; nothing else is written.
#
# Environment (defaults in brackets): DURATION [8], ROUNDS [2], CLIENTS ["10 100"],
# MODE [simple] (pgbench -M), POOL_SIZE [20], MAX_CLIENT_CONN [2000], SCALE [10], PG_BIN,
# PGWARDEN_BIN, SKIP_BUILD (as bench/run.sh), WORKERS ["1 2"] (pgwarden's runtime threads).
set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-10 100}
MODE=${MODE:-simple}
POOL_SIZE=${POOL_SIZE:-20}
MAX_CLIENT_CONN=${MAX_CLIENT_CONN:-2000}
SCALE=${SCALE:-10}
WORKERS=${WORKERS:-1 2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
PGWARDEN_BIN=${PGWARDEN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/pgwarden}
LOG_TAG=tls
SIDES=(none client server both)

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
setup_workdir
raise_nofile

make_certs() {
    local d="$WORK/certs"
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pgwarden bench CA" \
        -keyout "$d/ca.key" -out "$d/ca.crt" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/server.crt" >/dev/null 2>&1
    chmod 0600 "$d/server.key"
    if is_root; then chown -R postgres: "$d"; fi
    CERT="$d/server.crt" KEY="$d/server.key" CA="$d/ca.crt"
}

postgres_ssl_on() {
    cp "$CERT" "$WORK/data/server.crt"; cp "$KEY" "$WORK/data/server.key"
    chmod 0600 "$WORK/data/server.key"
    if is_root; then chown postgres: "$WORK/data/server.crt" "$WORK/data/server.key"; fi
    printf "ssl = on\n" >>"$WORK/data/postgresql.conf"
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" reload >/dev/null
    sleep 1
    PGSSLMODE=require "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT_" -U postgres -d postgres \
        -c 'SELECT 1' >/dev/null || { log "PostgreSQL does not accept TLS"; exit 1; }
}

client_encrypted() { [ "$1" = client ] || [ "$1" = both ]; }
server_encrypted() { [ "$1" = server ] || [ "$1" = both ]; }

start_pgwarden_tls() { # NAME SIDE WORKERS
    local args=(--workers "$3")
    if client_encrypted "$2"; then
        args+=(--client-tls-sslmode require --client-tls-cert-file "$CERT" --client-tls-key-file "$KEY")
    fi
    if server_encrypted "$2"; then args+=(--server-tls-sslmode require)
    else args+=(--server-tls-sslmode disable); fi
    PGWARDEN_ARGS=("${args[@]}")
    PGSSLMODE=prefer start_pgwarden "$1" transaction
}

start_pgbouncer_tls() { # NAME SIDE
    local ini=""
    if client_encrypted "$2"; then
        ini+=$'client_tls_sslmode = require\n'"client_tls_cert_file = $CERT"$'\n'"client_tls_key_file = $KEY"$'\n'
    fi
    if server_encrypted "$2"; then ini+=$'server_tls_sslmode = require\n'
    else ini+=$'server_tls_sslmode = disable\n'; fi
    PGBOUNCER_INI=$ini PGSSLMODE=prefer start_pgbouncer "$1" transaction
}

build_pgwarden
install_pgbouncer || log "PgBouncer could not be installed"
make_certs
start_postgres
postgres_ssl_on

TARGETS=()
for side in "${SIDES[@]}"; do
    for w in $WORKERS; do
        start_pgwarden_tls "pgwarden_w${w}_$side" "$side" "$w" && TARGETS+=("pgwarden_w${w}_$side")
    done
    if command -v pgbouncer >/dev/null; then
        start_pgbouncer_tls "pgbouncer_$side" "$side" && TARGETS+=("pgbouncer_$side")
    fi
done
PORT_direct_none=$PGPORT_ PORT_direct_client=$PGPORT_
TARGETS+=(direct_none direct_client)

CLK_TCK=$(getconf CLK_TCK)
RESULTS="$WORK/results"
: >"$RESULTS"
ticks() { if [ -n "$1" ]; then awk '{ print $14 + $15 }' "/proc/$1/stat"; else echo 0; fi; }

for round in $(seq 1 "$ROUNDS"); do
    for clients in $CLIENTS; do
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            target=${TARGETS[$(((i + round - 1) % n))]}
            side=${target##*_}
            pid=$(eval echo "\${PID_$target:-}")
            port=$(eval echo "\$PORT_$target")
            sslmode=disable; client_encrypted "$side" && sslmode=require
            c0=$(ticks "$pid")
            out=$(PGSSLMODE=$sslmode "$PG_BIN/pgbench" -S -n -M "$MODE" -c "$clients" -j 2 \
                -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1 || true)
            c1=$(ticks "$pid")
            tx=$(awk '/number of transactions actually processed/ { split($6, a, "/"); print a[1] }' <<<"$out")
            tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' <<<"$out")
            [ -n "$tx" ] && [ "$tx" -gt 0 ] || { log "$target at $clients clients: no transactions"; grep -m 3 -i error <<<"$out" >&2 || true; continue; }
            line=$(awk -v t="$target" -v c="$clients" -v n="$tx" -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v tps="$tps" \
                'BEGIN { printf "%s %d %.2f %.0f", t, c, (d > 0 ? d*1e6/hz/n : 0), tps }')
            echo "$line" >>"$RESULTS"
            log "round $round: $line (target clients cpu_us_per_tx tps)"
        done
    done
done

echo
echo "Transaction mode, pgbench -S -M $MODE, pool $POOL_SIZE, $ROUNDS rounds of ${DURATION}s (medians);"
echo "CPU is the proxy's own (user + system) per transaction; direct rows have none."
echo
echo "| clients | TLS on | target | CPU/tx (µs) | TPS |"
echo "| ---: | --- | --- | ---: | ---: |"
for clients in $CLIENTS; do
    for side in "${SIDES[@]}"; do
        for target in "${TARGETS[@]}"; do
            [ "${target##*_}" = "$side" ] || continue
            awk -v t="$target" -v c="$clients" -v side="$side" 'BEGIN { n = 0 } $1 == t && $2 == c { u[n] = $3; x[n] = $4; n++ }
                function med(a, n,   i, j, v) {
                    for (i = 1; i < n; i++) { v = a[i]; for (j = i - 1; j >= 0 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
                    return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
                }
                END { if (n) { name = t; sub("_" side "$", "", name); cpu = (name ~ /^direct/) ? "-" : sprintf("%.1f", med(u, n));
                      printf "| %d | %s | %s | %s | %.0f |\n", c, side, name, cpu, med(x, n) } }' "$RESULTS"
        done
    done
done
