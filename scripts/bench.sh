#!/usr/bin/env bash
# The load comparison in one command: pooler vs PgBouncer vs direct Postgres (benches/load.rs).
#   scripts/bench.sh             run it (knobs: DURATION, REPEAT, ROWS, ... see benches/load.rs)
#   scripts/bench.sh --install   first apt-get install what it compares with and measures by
#   scripts/bench.sh --hotpath   the criterion benchmark of the relay's scanners instead
#   PGO=1 scripts/bench.sh       measure the profile-guided build (scripts/build-pgo.sh) as
#                                `pooler`, with the plain release build beside it as `pooler-b`
#                                (unless POOLER_BIN_B names another)
# Results: target/bench-load/<time>/ (results.md, results.csv, chart.png, raw/).
# UPDATE_DOCS=1 also copies the chart and the report to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --install ]; then
  shift
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q postgresql postgresql-client pgbouncer strace tcpdump fonts-dejavu-core
fi
# 10,000 idle clients need more than 10,000 file descriptors (the bench raises soft to hard).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "${1:-}" = --hotpath ]; then
  shift
  exec cargo bench --bench hotpath -- "$@"
fi
if [ "${PGO:-0}" != 0 ]; then
  scripts/build-pgo.sh
  export POOLER_BIN=$PWD/target/pgo/pooler
  if [ -z "${POOLER_BIN_B:-}" ]; then
    cargo build --release --locked --bin pooler
    export POOLER_BIN_B=$PWD/target/release/pooler
  fi
fi
exec cargo bench --bench load -- "$@"
