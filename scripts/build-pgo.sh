#!/usr/bin/env bash
# A profile-guided (PGO) release build of the pooler: target/pgo/pooler.
#   scripts/build-pgo.sh         build it (about three release builds' time)
# How: an instrumented build serves pgbench's shapes (simple, extended and prepared -S, a login
# per transaction with md5 and with SCRAM, tpcb, 500 clients) through a throwaway Postgres,
# then the release build is made again with the counts it recorded, so LLVM lays hot code out
# together and inlines by use. The pooler's CPU outside the kernel is mostly instruction-cache
# and branch misses on a cold path (see docs/benchmarks.md, "A profile-guided build"): this
# is what cuts it.
# Needs what the quick start needs (scripts/ensure-postgres.sh) and llvm-profdata of the
# toolchain's LLVM: `rustup component add llvm-tools` (tried here when it is missing).
#   PGO_PGPORT, PGO_PORT   the throwaway Postgres's and the pooler's ports (54339, 6439)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh

SYSROOT=$(rustc --print sysroot)
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  rustup component add llvm-tools >&2 || true
fi
if [ ! -x "$PROFDATA" ]; then
  echo "build-pgo: no llvm-profdata at $PROFDATA: run \`rustup component add llvm-tools\`" >&2
  exit 1
fi

BIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -n "$BIN" ] || BIN=$(dirname "$(command -v initdb)")
PGPORT=${PGO_PGPORT:-54339}
PORT=${PGO_PORT:-6439}
asuser() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

DIR=$(mktemp -d /tmp/pooler-pgo-XXXXXX)
[ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
POOLER_PID=
cleanup() {
  [ -n "$POOLER_PID" ] && kill "$POOLER_PID" 2>/dev/null
  asuser "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# Paths in RUSTFLAGS are part of cargo's fingerprint: a fixed one keeps the instrumented
# build incremental, and the merged profile is named by its hash, so the optimized build is
# made again exactly when the counts changed.
OUT=$PWD/target/pgo
PROFILES=$OUT/profiles
mkdir -p "$OUT"
rm -rf "$PROFILES"
echo "build-pgo: instrumented build (target/pgo-gen)" >&2
RUSTFLAGS="-Cprofile-generate=$PROFILES" CARGO_TARGET_DIR=target/pgo-gen \
  cargo build --release --locked --bin pooler

asuser "$BIN/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C >/dev/null
asuser "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories='$DIR' -c max_connections=200 -c synchronous_commit=off" \
  start >/dev/null
psql -X -q -h "$DIR" -p "$PGPORT" -U postgres -d postgres \
  -c "CREATE ROLE app LOGIN PASSWORD 'app'" -c "CREATE DATABASE app OWNER app" \
  -c "CREATE ROLE app_scram LOGIN PASSWORD 'app'" -c "GRANT app TO app_scram"
# app_scram's secret is SCRAM's (pg_authid's), so its logins through the pooler run the
# SCRAM exchange (auth_type = md5 asks for SCRAM when the secret is SCRAM's, as PgBouncer does).
SCRAM_SECRET=$(psql -X -A -t -h "$DIR" -p "$PGPORT" -U postgres -d postgres \
  -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_scram'")
export PGPASSWORD=app
pgbench -q -i -s 1 -h 127.0.0.1 -p "$PGPORT" -U app app >/dev/null 2>&1

printf '"app" "app"\n"app_scram" "%s"\n' "$SCRAM_SECRET" >"$DIR/userlist.txt"
cat >"$DIR/pooler.toml" <<TOML
[pooler]
listen_addr = "127.0.0.1"
listen_port = $PORT
pool_mode = "transaction"
auth_type = "md5"
auth_file = "$DIR/userlist.txt"
default_pool_size = 20
reserve_pool_size = 5
max_client_conn = 2000
metrics_port = 0

[databases.app]
host = "127.0.0.1"
port = $PGPORT
TOML

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
target/pgo-gen/release/pooler --config "$DIR/pooler.toml" >"$DIR/pooler.log" 2>&1 &
POOLER_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
echo "build-pgo: training (about 30 s of pgbench)" >&2
train() { pgbench -n -j 2 -h 127.0.0.1 -p "$PORT" -U "${TRAIN_USER:-app}" "$@" app >/dev/null; }
train -S -c 64 -T 5
train -S -M extended -c 64 -T 5
train -S -M prepared -c 16 -T 3
train -S -C -c 64 -T 5
TRAIN_USER=app_scram train -S -C -c 16 -T 3
train -c 16 -T 5
train -S -c 500 -T 5
# The profile is written when the process exits: a graceful shutdown, waited for.
kill -TERM "$POOLER_PID"
wait "$POOLER_PID" || true
POOLER_PID=

"$PROFDATA" merge -o "$DIR/merged.profdata" "$PROFILES"/*.profraw
rm -f "$OUT"/merged-*.profdata
MERGED=$OUT/merged-$(sha256sum "$DIR/merged.profdata" | cut -c1-16).profdata
cp "$DIR/merged.profdata" "$MERGED"
echo "build-pgo: optimized build (target/pgo-use)" >&2
RUSTFLAGS="-Cprofile-use=$MERGED" CARGO_TARGET_DIR=target/pgo-use \
  cargo build --release --locked --bin pooler
cp target/pgo-use/release/pooler "$OUT/pooler"
echo "build-pgo: target/pgo/pooler" >&2
