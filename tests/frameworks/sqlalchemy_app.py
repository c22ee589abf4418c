"""SQLAlchemy 2 ORM on psycopg 3 with SQLAlchemy's own QueuePool: what the dialect asks at
connect (version, current_schema, standard_conforming_strings, isolation level), its
rollback on return, psycopg's prepared statements, and an AUTOCOMMIT connection, with more
app connections than the pooler's server pool."""
import threading

import fwcommon as fw
from sqlalchemy import URL, Integer, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "fw_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[int] = mapped_column(Integer, nullable=False)
    n: Mapped[int] = mapped_column(Integer, nullable=False)


url = URL.create("postgresql+psycopg", username=fw.USER, password=fw.PASSWORD, host=fw.HOST,
                 port=fw.PORT, database=fw.DB)
engine = create_engine(url, pool_size=fw.CONNS, max_overflow=0, pool_timeout=30,
                       connect_args={"application_name": "fw-sqlalchemy"})
Base.metadata.create_all(engine)

tally = fw.Tally()
lock = threading.Lock()
done = threading.Event()
release = threading.Event()
barrier = threading.Barrier(fw.WORKERS + 1)


def worker(w):
    with engine.connect():
        barrier.wait()
    for i in range(fw.PER_WORKER):
        if not fw.in_time():
            break
        try:
            with Session(engine) as s, s.begin():
                s.add(Item(worker=w, n=i))
                s.flush()
                count, timeout = s.execute(
                    select(func.count(Item.id), func.current_setting("statement_timeout"))
                    .where(Item.worker == w)).one()
            with lock:
                if fw.check_txn(tally, w, i, count, timeout):
                    tally.committed += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                tally.error(repr(e))


def own():
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(f"SET statement_timeout = '{fw.OWN_TIMEOUT}'")
        barrier.wait()
        while True:
            finished = done.is_set()
            try:
                timeout = c.exec_driver_sql("SHOW statement_timeout").scalar()
                with lock:
                    fw.check_own(tally, timeout)
            except Exception as e:  # noqa: BLE001
                with lock:
                    tally.error(repr(e))
            if finished:
                break
            done.wait(0.02)
        release.wait()


threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(fw.WORKERS)]
owner = threading.Thread(target=own, daemon=True)
for t in threads + [owner]:
    t.start()
for t in threads:
    t.join()
done.set()
with Session(engine) as s:
    rows = s.scalar(select(func.count(Item.id)))
fw.report("sqlalchemy", tally, rows, engine.pool.checkedin() + engine.pool.checkedout())
fw.hold()
release.set()
owner.join()
engine.dispose()
