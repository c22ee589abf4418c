"""What the Python apps of the frameworks suite share: the contract with tests/frameworks.rs.

Connection details come in FW_HOST, FW_PORT, FW_USER, FW_PASSWORD, FW_DB; the load in
FW_CONNS (app pool size), FW_TXNS (transactions in all) and FW_SECONDS (no transaction starts
after that many seconds). An app runs FW_CONNS - 1 workers, each doing its share of the
transactions (insert a row, then count its own rows and read statement_timeout in the same
transaction), while one more connection sets statement_timeout for itself and checks that it
keeps it. Then, with every connection still open, it prints one JSON line with what it
measured and waits for a line on stdin (the test's go-ahead) before it closes them.
"""
import json
import os
import sys
import time

HOST = os.environ["FW_HOST"]
PORT = int(os.environ["FW_PORT"])
USER = os.environ["FW_USER"]
PASSWORD = os.environ["FW_PASSWORD"]
DB = os.environ["FW_DB"]
CONNS = int(os.environ.get("FW_CONNS", "10"))
TXNS = int(os.environ.get("FW_TXNS", "300"))
SECONDS = float(os.environ.get("FW_SECONDS", "60"))
WORKERS = CONNS - 1
PER_WORKER = -(-TXNS // WORKERS)
# The one app connection's own setting; every other connection must see the default.
OWN_TIMEOUT = "12345ms"
DEFAULT_TIMEOUT = "0"
START = time.monotonic()
# Schema-per-tenant, as django-tenants and similar do it: each worker sets search_path to its
# tenant's schema on checkout (in a statement of its own) and then uses unqualified names.
TENANTS = 3
TENANT_DDL = "".join(
    f"CREATE SCHEMA tenant_{t}; CREATE TABLE tenant_{t}.tenant_items (worker int NOT NULL);"
    for t in range(TENANTS))


def tenant_path(worker):
    return f"tenant_{worker % TENANTS}, public"


def in_time():
    return time.monotonic() - START < SECONDS


class Tally:
    def __init__(self):
        self.committed = 0
        self.errors = 0
        self.samples = []
        self.own_checks = 0

    def error(self, what):
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(str(what)[:300])


def check_txn(tally, worker, i, count, timeout):
    """The checks on one transaction's results; True when they hold."""
    if count != i + 1:
        tally.error(f"worker {worker} txn {i}: counted {count} own rows, expected {i + 1}")
        return False
    if timeout != DEFAULT_TIMEOUT:
        tally.error(f"worker {worker} txn {i}: statement_timeout {timeout!r}, another client's")
        return False
    return True


def check_tenant(tally, worker, i, schema, count):
    """The tenant part of a transaction: its unqualified table was the worker's tenant's."""
    want = f"tenant_{worker % TENANTS}"
    if schema != want:
        tally.error(f"worker {worker} txn {i}: current_schema {schema!r}, expected {want}")
        return False
    if count != i + 1:
        tally.error(f"worker {worker} txn {i}: {count} rows in {want}, expected {i + 1}")
        return False
    return True


def check_own(tally, timeout):
    if timeout == OWN_TIMEOUT:
        tally.own_checks += 1
    else:
        tally.error(f"own connection: statement_timeout {timeout!r}, expected {OWN_TIMEOUT}")


def report(stack, tally, rows, connections, **extra):
    out = {
        "stack": stack,
        "expected": WORKERS * PER_WORKER,
        "committed": tally.committed,
        "errors": tally.errors,
        "error_samples": tally.samples,
        "rows": rows,
        "own_checks": tally.own_checks,
        "connections": connections,
    }
    out.update(extra)
    print(json.dumps(out), flush=True)


def hold():
    """Waits for the test's go-ahead (or for stdin to close)."""
    sys.stdin.readline()
