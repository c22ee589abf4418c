#!/usr/bin/env bash
# Makes sure what the quick start and the tests need is installed: PostgreSQL's server
# binaries (initdb, pg_ctl), psql and pgbench (and ss for the tests, make for jemalloc), from Debian's packages
# when missing (as root, or through sudo), and, when running as root, a `postgres` user to
# run the server as (Postgres refuses to run as root). Used by scripts/quickstart.sh, scripts/test.sh and .ci/run,
# so the README's two commands work on a machine that has only Rust.
#   PG_BINDIR=DIR                 use the server binaries in DIR (as the test harness does)
#   ENSURE_POSTGRES_DRY_RUN=1     print the commands instead of running them
set -euo pipefail

have_initdb() {
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/initdb" ]
  else
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
  fi
}
run() {
  if [ -n "${ENSURE_POSTGRES_DRY_RUN:-}" ]; then echo "would run: $*"; else "$@"; fi
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    run "$@"
  elif command -v sudo >/dev/null 2>&1; then
    run sudo "$@"
  else
    echo "PostgreSQL is missing and this is not root: install postgresql and postgresql-client" >&2
    exit 1
  fi
}

if ! have_initdb || ! command -v psql >/dev/null 2>&1 || ! command -v pgbench >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is missing: install its server binaries (initdb), psql and pgbench," \
      "or point PG_BINDIR at the directory holding initdb" >&2
    exit 1
  fi
  echo "installing PostgreSQL (Debian packages postgresql, postgresql-client)" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-client
fi
# tests/dropin.rs reads the sockets' keepalive timers with ss (Debian's iproute2).
if ! command -v ss >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing ss (Debian package iproute2) for the tests" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2
fi
# jemalloc, the pooler's allocator, is a C library whose build runs make (the C compiler is
# there already: Rust links with it).
if ! command -v make >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing make (Debian package make) to build jemalloc" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q make
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  run useradd --system --create-home --shell /bin/bash postgres
fi
