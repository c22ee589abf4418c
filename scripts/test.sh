#!/usr/bin/env bash
# The test command (README quick start): unit tests and integration tests against a real
# PostgreSQL that the test harness starts itself on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
# PostgreSQL's binaries (and, as root, a postgres user) are installed when missing.
scripts/ensure-postgres.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo test --locked "$@"
