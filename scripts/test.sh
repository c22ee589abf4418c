#!/usr/bin/env bash
# The test command (README quick start): unit tests and integration tests against a real
# PostgreSQL that the test harness starts itself on a free loopback port. Arguments go to
# cargo test: `scripts/test.sh --test frameworks` runs one suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# PostgreSQL's binaries (and, as root, a postgres user) are installed when missing.
scripts/ensure-postgres.sh
# The frameworks suite's stacks (Ruby, Java, Python, node), installed when missing; if that is
# not possible here, tests/frameworks.rs skips the missing stacks with a note (CI and
# POOLER_REQUIRE_FRAMEWORKS=1 make them fail instead).
scripts/ensure-frameworks.sh ||
  echo "test.sh: scripts/ensure-frameworks.sh failed: the frameworks tests will skip what is missing" >&2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo test --locked "$@"
