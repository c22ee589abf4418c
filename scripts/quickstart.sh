#!/usr/bin/env bash
# One command: a throwaway local Postgres (127.0.0.1:54329, user app / password app,
# database app) and the pooler in front of it on 127.0.0.1:6432.
#   scripts/quickstart.sh            then: psql "host=127.0.0.1 port=6432 user=app password=app dbname=app"
# State lives in ${POOLER_DEV_DIR:-/tmp/pooler-dev}; `scripts/quickstart.sh --stop` stops Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
# Postgres itself is installed when missing (Debian packages), so a machine with only Rust will do.
[ "${1:-}" = --stop ] || scripts/ensure-postgres.sh
DIR=${POOLER_DEV_DIR:-/tmp/pooler-dev}
PGPORT=${POOLER_DEV_PGPORT:-54329}
BIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -n "$BIN" ] || BIN=$(dirname "$(command -v initdb)")
asuser() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ "${1:-}" = --stop ]; then
  asuser "$BIN/pg_ctl" -D "$DIR/data" -m fast stop
  exit 0
fi

mkdir -p "$DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
  asuser "$BIN/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C >/dev/null
fi
if ! asuser "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  asuser "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories='$DIR'" start >/dev/null
fi
psql -X -q -h "$DIR" -p "$PGPORT" -U postgres -d postgres <<SQL
SELECT 'CREATE ROLE app LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') \gexec
ALTER ROLE app PASSWORD 'app';
SELECT 'CREATE DATABASE app OWNER app' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'app') \gexec
SQL
echo '"app" "app"' >"$DIR/userlist.txt"
cat >"$DIR/pooler.toml" <<TOML
[pooler]
listen_addr = "127.0.0.1"
listen_port = 6432
pool_mode = "transaction"
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
default_pool_size = 20
reserve_pool_size = 5
max_client_conn = 10000
ignore_startup_parameters = "extra_float_digits"
admin_users = "app"               # psql ... dbname=pgbouncer: the admin console
metrics_port = 9127               # http://127.0.0.1:9127/metrics

[databases.app]
host = "127.0.0.1"
port = $PGPORT
TOML
echo "postgres on 127.0.0.1:$PGPORT; pooler on 127.0.0.1:6432"
echo "try: psql \"host=127.0.0.1 port=6432 user=app password=app dbname=app\""
echo "admin console: psql \"host=127.0.0.1 port=6432 user=app password=app dbname=pgbouncer\" -c 'SHOW POOLS'"
echo "metrics: curl -s http://127.0.0.1:9127/metrics"
exec cargo run --release -- --config "$DIR/pooler.toml"
