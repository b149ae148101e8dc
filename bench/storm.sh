#!/usr/bin/env bash
# A connection storm through pgwarden and PgBouncer: thousands of clients connecting at the
# same moment over a pool of 20 server connections.
#
#   bench/storm.sh                                   # 5,000 and 10,000 clients; about 5 minutes
#   STORM_CLIENTS=5000 STORM_AUTH=trust bench/storm.sh   # a quick check
#
# It builds pgwarden and its storm client (examples/storm.rs) in release mode, installs
# PgBouncer if missing (apt-get), starts a throwaway PostgreSQL 15 (user postgres with a
# password), and for each client authentication in STORM_AUTH, each client count in
# STORM_CLIENTS and each proxy starts a fresh proxy instance in transaction mode (pool size
# POOL_SIZE, MAX_CLIENT_CONN clients allowed, the same for both) and lets the storm loose:
# every client connects at once with application_name set to its identity (IDENTITIES,
# interleaved in connect order), runs QUERIES queries (`SELECT pg_sleep(SLEEP_MS/1000)`, or
# `SELECT 1` with SLEEP_MS=0) and stays connected until all are done. Reported per run:
# the time until every client was served (or had failed), per identity the wait (storm
# start to first query result) at p50 and p99 and any failures with their errors, and the
# proxy's RSS before the storm, with every served client connected, and at its peak
# (VmHWM). The table goes into bench/README.md between `<!-- storm:start -->` and
# `<!-- storm:end -->`, each run's JSON into bench/last-storm.csv.
#
# Environment (defaults in brackets):
#   STORM_CLIENTS    client counts ["5000 10000"]
#   STORM_AUTH       client authentication, each run in turn ["trust scram-sha-256"]
#   IDENTITIES       application_name:weight,... [flood:0.8,billing:0.1,auth:0.1]
#   QUERIES          queries per client [1]
#   SLEEP_MS         each query's pg_sleep in milliseconds; 0 for SELECT 1 [10]
#   TIMEOUT          seconds a client may take to be served before it counts as failed [120]
#   POOL_SIZE        server connections per pool, both proxies [20]
#   MAX_CLIENT_CONN  client connections each proxy accepts [11000]
#   PASSWORD         user postgres' password (PostgreSQL, proxies, clients) [storm-secret]
#   PGBOUNCER_PLAIN  set to 1 to give PgBouncer the plain password rather than the SCRAM secret
#   PG_BIN, PGWARDEN_BIN, SKIP_BUILD, KEEP_WORKDIR, README: as in bench/run.sh
#
# For SCRAM PgBouncer's userlist holds PostgreSQL's SCRAM secret (see below), and PgBouncer
# gets listen_backlog = 1024, the backlog pgwarden listens with (tokio's), rather
# than its default of 128, so both drop the same excess SYNs. 10,000 clients need 10,000
# descriptors in the storm client and more in the proxy: the script raises `ulimit -n`.
set -euo pipefail

PARAM_VARS=(STORM_CLIENTS STORM_AUTH IDENTITIES QUERIES SLEEP_MS TIMEOUT POOL_SIZE MAX_CLIENT_CONN PGBOUNCER_PLAIN)
COMMAND=""
for v in "${PARAM_VARS[@]}"; do
    if [ -n "${!v+x}" ]; then
        case ${!v} in *' '*) COMMAND+="$v=\"${!v}\" " ;; *) COMMAND+="$v=${!v} " ;; esac
    fi
done
COMMAND+="bench/storm.sh"

STORM_CLIENTS=${STORM_CLIENTS:-5000 10000}
STORM_AUTH=${STORM_AUTH:-trust scram-sha-256}
IDENTITIES=${IDENTITIES:-flood:0.8,billing:0.1,auth:0.1}
QUERIES=${QUERIES:-1}
SLEEP_MS=${SLEEP_MS:-10}
TIMEOUT=${TIMEOUT:-120}
POOL_SIZE=${POOL_SIZE:-20}
MAX_CLIENT_CONN=${MAX_CLIENT_CONN:-11000}
PASSWORD=${PASSWORD:-storm-secret}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PGWARDEN_BIN=${PGWARDEN_BIN:-$TARGET_DIR/release/pgwarden}
README=${README:-$BENCH_DIR/README.md}
PROXIES=(pgwarden pgbouncer)
# shellcheck disable=SC2034 # read by lib.sh
LOG_TAG=storm PG_MAX_CONNECTIONS=100 PGBOUNCER_INI="listen_backlog = 1024"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
setup_workdir

raise_nofile
max_clients=$(echo "$STORM_CLIENTS" | tr ' ' '\n' | sort -n | tail -n 1)
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((max_clients + 200)) ]; then
    log "warning: ulimit -n is $(ulimit -n); $max_clients clients will run out of file descriptors"
fi

build_ok=1
build_pgwarden || build_ok=0
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building the storm client (cargo build --release --example storm)"
    (cd "$ROOT" && cargo build --release --example storm) >"$WORK/build-storm.log" 2>&1 || {
        log "storm client build failed:"; tail -n 20 "$WORK/build-storm.log" >&2; exit 1
    }
fi
cp "$TARGET_DIR/release/examples/storm" "$WORK/storm"
install_pgbouncer || log "PgBouncer could not be installed"
start_postgres
# For SCRAM runs PgBouncer's userlist gets PostgreSQL's SCRAM secret for the password, as
# pg_authid holds it: with the plain password PgBouncer 1.18 runs PBKDF2 (4,096 rounds) on
# every SCRAM login, while pgwarden derives its verifier once per password. (With trust it
# needs the plain password: it passes a SCRAM secret on to PostgreSQL only for clients that
# logged in with SCRAM.) PGBOUNCER_PLAIN=1 gives it the plain password for SCRAM too.
SCRAM_SECRET=""
if [ "${PGBOUNCER_PLAIN:-0}" != 1 ]; then
    SCRAM_SECRET=$("$PG_BIN/psql" -X -A -t -h 127.0.0.1 -p "$PGPORT_" -U postgres -d postgres \
        -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
fi

STORM_CSV="$BENCH_DIR/last-storm.csv"
echo "target,auth,clients,status,result" >"$STORM_CSV"

# One storm of $3 clients through a fresh instance of proxy $1 with client auth $2.
storm_one() {
    local proxy=$1 auth=$2 clients=$3 name="storm_$1_${2//-/_}_$3" port pid status=ok out
    out="$WORK/storm-$proxy-$auth-$clients"
    AUTH_TYPE=$auth PGBOUNCER_SECRET=""
    [ "$auth" != scram-sha-256 ] || PGBOUNCER_SECRET=$SCRAM_SECRET
    if ! "start_$proxy" "$name" transaction; then
        echo "$proxy,$auth,$clients,failed to start," >>"$STORM_CSV"; return
    fi
    port=$(eval echo "\${PORT_$name}"); pid=$(eval echo "\${PID_$name}")
    sleep 1
    log "$proxy ($auth): $clients clients at once"
    "$WORK/storm" --port "$port" --user postgres --password "$PASSWORD" --dbname postgres \
        --clients "$clients" --identities "$IDENTITIES" --queries "$QUERIES" \
        --sleep-ms "$SLEEP_MS" --timeout "$TIMEOUT" --hold --rss-pid "$pid" \
        >"$out.json" 2>"$out.err" || status="storm client failed: $(tail -n 1 "$out.err" | tr -d ',')"
    kill -0 "$pid" 2>/dev/null || status="$proxy died"
    log "$proxy ($auth) $clients clients: $status $(cat "$out.json")"
    local result
    result=$(tr -d '\n' <"$out.json")
    echo "$proxy,$auth,$clients,$status,\"${result//\"/\"\"}\"" >>"$STORM_CSV"
    stop_instance "$name"
    # Let the last storm's sockets close before the next.
    sleep 2
}

for auth in $STORM_AUTH; do
    for clients in $STORM_CLIENTS; do
        for proxy in "${PROXIES[@]}"; do
            if [ "$proxy" = pgwarden ] && [ $build_ok = 0 ]; then
                echo "$proxy,$auth,$clients,failed to build," >>"$STORM_CSV"; continue
            fi
            if [ "$proxy" = pgbouncer ] && ! command -v pgbouncer >/dev/null; then
                echo "$proxy,$auth,$clients,not installed," >>"$STORM_CSV"; continue
            fi
            storm_one "$proxy" "$auth" "$clients"
        done
    done
done

for f in "$WORK"/storm_pgwarden_*.log; do
    if [ -s "$f" ]; then log "$(basename "$f"): pgwarden logged $(grep -c . "$f") warning/error lines"; fi
done

META="Run: $(date -u '+%Y-%m-%d %H:%M UTC'), pgwarden built from commit ${BUILT_FROM:-none}; command: \`$COMMAND\`
Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $("$PG_BIN/postgres" --version), $(pgbouncer --version 2>/dev/null | head -n 1 || echo "no PgBouncer"); ulimit -n $(ulimit -n)
Transaction mode, pool size $POOL_SIZE, max_client_conn $MAX_CLIENT_CONN; identities $IDENTITIES; $QUERIES query per client ($(if [ "$SLEEP_MS" -gt 0 ]; then echo "SELECT pg_sleep($SLEEP_MS ms)"; else echo "SELECT 1"; fi)); timeout ${TIMEOUT}s"
python3 - "$STORM_CSV" "$README" "$META" <<'PY'
import csv, json, sys

runs_csv, readme, meta = sys.argv[1:4]
rows = list(csv.DictReader(open(runs_csv, newline="")))
results = [(r, json.loads(r["result"]) if r["result"] else None) for r in rows]
names = []
for _, res in results:
    for ident in (res or {}).get("identities", []):
        if ident["name"] not in names:
            names.append(ident["name"])

def s(ms):
    return "–" if ms is None else f"{ms / 1000:.2f}"

def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f}"

head = ["proxy", "client auth", "clients", "time to serve all (s)", "ok / failed"]
head += [f"{n} wait p50 / p99 (s)" for n in names]
head += ["RSS before → all connected (MiB)", "KiB per client", "peak RSS (MiB)"]
lines = [f"- {m}" for m in meta.splitlines()] + [""]
lines += ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
notes = []
for r, res in results:
    cells = [r["target"], r["auth"], r["clients"]]
    if res is None:
        lines.append("| " + " | ".join(cells + [r["status"]] + ["–"] * (len(head) - 4)) + " |")
        continue
    ok = sum(i["ok"] for i in res["identities"])
    failed = sum(i["failed"] for i in res["identities"])
    cells += [s(res["time_to_serve_all_ms"]), f"{ok:,} / {failed:,}"]
    by_name = {i["name"]: i for i in res["identities"]}
    for n in names:
        w = by_name.get(n, {}).get("wait_ms", {})
        cells.append(f"{s(w.get('p50'))} / {s(w.get('p99'))}")
    rss = res.get("rss_kib", {})
    before, held, peak = rss.get("before"), rss.get("held"), rss.get("peak")
    cells.append(f"{mib(before)} → {mib(held)}")
    per = (held - before) / res["held"] if before and held and res["held"] else None
    cells.append("–" if per is None else f"{per:.1f}")
    cells.append(mib(peak))
    lines.append("| " + " | ".join(cells) + " |")
    for i in res["identities"]:
        for error, count in i["errors"].items():
            notes.append(f"- {r['target']}, {r['auth']}, {r['clients']} clients, {i['name']}: "
                         f"{count:,} × `{error}`")
    if r["status"] != "ok":
        notes.append(f"- {r['target']}, {r['auth']}, {r['clients']} clients: {r['status']}")
lines += [""] + (["Failures:", ""] + notes if notes else ["No client failed."])

start, end = "<!-- storm:start -->", "<!-- storm:end -->"
text = open(readme).read()
block = "\n".join([start, ""] + lines + ["", end])
if start in text and end in text:
    text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
open(readme, "w").write(text)
print("\n".join(lines))
PY
log "results written to $README"
