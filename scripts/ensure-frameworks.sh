#!/usr/bin/env bash
# Makes sure what the frameworks suite (tests/frameworks.rs) needs is installed, skipping what
# is already there, so a second run costs well under a second:
#   - Debian packages (as root, or through sudo): ruby-activerecord + ruby-pg (Rails'
#     ActiveRecord), libpostgresql-jdbc-java + libhikaricp-java + libslf4j-java (pgjdbc and
#     HikariCP; default-jdk-headless when there is no javac);
#   - a Python venv at target/frameworks/venv (from python3.11, or python3) with
#     psycopg[binary,pool] (3), asyncpg, SQLAlchemy and Django from PyPI;
#   - node packages pg and knex from npm under target/frameworks/node.
# Used by .ci/run and scripts/test.sh.
#   ENSURE_FRAMEWORKS_DRY_RUN=1   print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/frameworks
run() {
  if [ -n "${ENSURE_FRAMEWORKS_DRY_RUN:-}" ]; then echo "would run: $*"; else "$@"; fi
}
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    run "$@"
  elif command -v sudo >/dev/null 2>&1; then
    run sudo "$@"
  else
    echo "ensure-frameworks: Debian packages missing and this is not root: install $*" >&2
    exit 1
  fi
}

# Debian packages: one dpkg query for all of them.
debs=(ruby-activerecord ruby-pg libpostgresql-jdbc-java libhikaricp-java libslf4j-java)
missing=()
# A machine without a JDK gets Debian's.
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
for p in "${debs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-frameworks: not Debian: install ${missing[*]} by hand" >&2
    exit 1
  fi
  echo "ensure-frameworks: installing Debian packages ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi
if ! command -v javac >/dev/null 2>&1; then
  echo "ensure-frameworks: no JDK (javac): install one (e.g. Debian's default-jdk-headless)" >&2
  exit 1
fi

# Python: a venv of its own, its packages pinned to what the suite was written against.
venv=$out/venv
py_pkgs=("psycopg[binary,pool]>=3.1,<4" "asyncpg>=0.29,<1" "SQLAlchemy>=2.0,<3" "Django>=4.2,<6")
if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c \
  'import psycopg, psycopg_pool, asyncpg, sqlalchemy, django' >/dev/null 2>&1; then
  python=$(command -v python3.11 || command -v python3)
  echo "ensure-frameworks: making $venv with ${py_pkgs[*]}" >&2
  run mkdir -p "$out"
  run "$python" -m venv "$venv"
  run "$venv/bin/pip" install -q --disable-pip-version-check "${py_pkgs[@]}"
fi

# Node: pg and knex in a package directory of their own.
node_dir=$out/node
if ! [ -f "$node_dir/node_modules/pg/package.json" ] || ! [ -f "$node_dir/node_modules/knex/package.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "ensure-frameworks: no npm: install node and npm" >&2
    exit 1
  fi
  echo "ensure-frameworks: installing pg and knex under $node_dir" >&2
  run mkdir -p "$node_dir"
  [ -f "$node_dir/package.json" ] || run sh -c "echo '{\"private\": true}' > '$node_dir/package.json'"
  run npm install --prefix "$node_dir" --no-audit --no-fund --silent "pg@^8" "knex@^3"
fi
