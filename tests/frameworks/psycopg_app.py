"""psycopg 3 with its own pool (psycopg_pool): prepared statements after prepare_threshold,
the pool's rollback on return, more app connections than the pooler's server pool."""
import threading

import fwcommon as fw
import psycopg
from psycopg_pool import ConnectionPool

conninfo = psycopg.conninfo.make_conninfo(
    host=fw.HOST, port=fw.PORT, user=fw.USER, password=fw.PASSWORD, dbname=fw.DB,
    application_name="fw-psycopg",
)
pool = ConnectionPool(conninfo, min_size=fw.CONNS, max_size=fw.CONNS, open=False, timeout=30)
pool.open(wait=True, timeout=30)
with pool.connection() as c:
    c.execute("CREATE TABLE fw_items (id serial PRIMARY KEY, worker int NOT NULL, n int NOT NULL)")
    c.execute(fw.TENANT_DDL)

tally = fw.Tally()
lock = threading.Lock()
done = threading.Event()
barrier = threading.Barrier(fw.WORKERS + 1)
release = threading.Event()


def worker(w):
    # Every app connection checked out at once: the app really holds CONNS connections.
    with pool.connection() as c:
        barrier.wait()
    for i in range(fw.PER_WORKER):
        if not fw.in_time():
            break
        try:
            with pool.connection() as c:
                # The tenant's schema for this checkout, in a transaction of its own: the
                # next one may run on another server.
                c.execute(f"SET search_path TO {fw.tenant_path(w)}")
                c.commit()
                with c.transaction():
                    c.execute("INSERT INTO fw_items (worker, n) VALUES (%s, %s)", (w, i))
                    c.execute("INSERT INTO tenant_items (worker) VALUES (%s)", (w,))
                    count, timeout = c.execute(
                        "SELECT count(*), current_setting('statement_timeout') "
                        "FROM fw_items WHERE worker = %s", (w,)).fetchone()
                    schema, tenant_count = c.execute(
                        "SELECT current_schema(), count(*) FROM tenant_items WHERE worker = %s",
                        (w,)).fetchone()
            with lock:
                if fw.check_tenant(tally, w, i, schema, tenant_count) and fw.check_txn(
                        tally, w, i, count, timeout):
                    tally.committed += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                tally.error(repr(e))


def own():
    # Checked out for the whole run: a session of its own, with a setting of its own.
    with pool.connection() as c:
        c.autocommit = True
        c.execute(f"SET statement_timeout = '{fw.OWN_TIMEOUT}'")
        barrier.wait()
        while True:
            finished = done.is_set()
            try:
                # Settings changed in a transaction that rolls back, in a savepoint rolled
                # back, or with SET LOCAL are gone afterwards, as on a dedicated connection.
                with c.transaction():
                    c.execute("SET statement_timeout = '1s'")
                    raise psycopg.Rollback()
                with c.transaction():
                    c.execute("SET LOCAL statement_timeout = '2s'")
                    with c.transaction():
                        c.execute("SET statement_timeout = '3s'")
                        raise psycopg.Rollback()
                    (inner,) = c.execute("SHOW statement_timeout").fetchone()
                    if inner != "2s":
                        with lock:
                            tally.error(f"own connection: {inner!r} after ROLLBACK TO, expected 2s")
                (timeout,) = c.execute("SHOW statement_timeout").fetchone()
                with lock:
                    fw.check_own(tally, timeout)
            except Exception as e:  # noqa: BLE001
                with lock:
                    tally.error(repr(e))
            if finished:
                break
            done.wait(0.02)
        release.wait()
        c.autocommit = False


threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(fw.WORKERS)]
owner = threading.Thread(target=own, daemon=True)
for t in threads + [owner]:
    t.start()
for t in threads:
    t.join()
done.set()
with pool.connection() as c:
    (rows,) = c.execute("SELECT count(*) FROM fw_items").fetchone()
stats = pool.get_stats()
fw.report("psycopg", tally, rows, stats.get("pool_size", 0))
fw.hold()
release.set()
owner.join()
pool.close()
