"""asyncpg with its own pool: its statement cache (named prepared statements on every
connection) and the reset the pool runs when a connection is released
(pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL), with more app connections than
the pooler's server pool."""
import asyncio
import sys

import asyncpg
import fwcommon as fw

APP_NAME = "fw-asyncpg"


async def main():
    pool = await asyncpg.create_pool(
        host=fw.HOST, port=fw.PORT, user=fw.USER, password=fw.PASSWORD, database=fw.DB,
        min_size=fw.CONNS, max_size=fw.CONNS, server_settings={"application_name": APP_NAME},
    )
    await pool.execute(
        "CREATE TABLE fw_items (id serial PRIMARY KEY, worker int NOT NULL, n int NOT NULL)")
    await pool.execute(fw.TENANT_DDL)
    tally = fw.Tally()
    done = asyncio.Event()
    release = asyncio.Event()
    barrier = asyncio.Barrier(fw.WORKERS + 1)

    async def worker(w):
        async with pool.acquire():
            await barrier.wait()
        for i in range(fw.PER_WORKER):
            if not fw.in_time():
                break
            try:
                async with pool.acquire() as c:
                    # The pool's RESET ALL took the last one away: the tenant's schema again.
                    await c.execute(f"SET search_path TO {fw.tenant_path(w)}")
                    async with c.transaction():
                        await c.execute("INSERT INTO fw_items (worker, n) VALUES ($1, $2)", w, i)
                        await c.execute("INSERT INTO tenant_items (worker) VALUES ($1)", w)
                        tenant = await c.fetchrow(
                            "SELECT current_schema(), count(*) FROM tenant_items WHERE worker = $1",
                            w)
                        row = await c.fetchrow(
                            "SELECT count(*), current_setting('statement_timeout'), "
                            "current_setting('application_name') FROM fw_items WHERE worker = $1",
                            w)
                # The pool's RESET ALL on release goes back to the startup value.
                if not fw.check_tenant(tally, w, i, tenant[0], tenant[1]):
                    pass
                elif row[2] != APP_NAME:
                    tally.error(f"worker {w} txn {i}: application_name {row[2]!r}")
                elif fw.check_txn(tally, w, i, row[0], row[1]):
                    tally.committed += 1
            except Exception as e:  # noqa: BLE001
                tally.error(repr(e))

    async def own():
        async with pool.acquire() as c:
            await c.execute(f"SET statement_timeout = '{fw.OWN_TIMEOUT}'")
            await barrier.wait()
            while True:
                finished = done.is_set()
                try:
                    fw.check_own(tally, await c.fetchval("SHOW statement_timeout"))
                except Exception as e:  # noqa: BLE001
                    tally.error(repr(e))
                if finished:
                    break
                await asyncio.sleep(0.02)
            await release.wait()

    owner = asyncio.create_task(own())
    await asyncio.gather(*(worker(w) for w in range(fw.WORKERS)))
    done.set()
    rows = await pool.fetchval("SELECT count(*) FROM fw_items")
    fw.report("asyncpg", tally, rows, pool.get_size())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    release.set()
    await owner
    await pool.close()


asyncio.run(main())
