"""Django's ORM on psycopg 3, settings configured here: a model, `migrate` (contenttypes and
auth migrations, the model's table by run_syncdb), persistent connections one per thread, and
Django's connect-time time zone setting: with USE_TZ off and TIME_ZONE Asia/Tokyo, every new
connection runs `SELECT set_config('TimeZone', 'Asia/Tokyo', false)`, which every later
transaction must see, whichever server it lands on."""
import sys
import threading
import types

import fwcommon as fw
import django
import psycopg
from django.apps import AppConfig
from django.conf import settings

TIME_ZONE = "Asia/Tokyo"
# The usual Django way to a schema of its own: `options=-c search_path=...` at connect, a
# startup parameter every server the connection lands on must carry.
SCHEMA = "fw_django"
with psycopg.connect(host=fw.HOST, port=fw.PORT, user=fw.USER, password=fw.PASSWORD,
                     dbname=fw.DB, autocommit=True) as setup:
    setup.execute(f"CREATE SCHEMA {SCHEMA}")
sys.modules["fwapp"] = types.ModuleType("fwapp")


class FwConfig(AppConfig):
    name = "fwapp"
    label = "fwapp"
    path = fw.__file__.rsplit("/", 1)[0]
    default_auto_field = "django.db.models.AutoField"


settings.configure(
    DEBUG=False,
    USE_TZ=False,
    TIME_ZONE=TIME_ZONE,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "__main__.FwConfig"],
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": fw.DB, "USER": fw.USER, "PASSWORD": fw.PASSWORD,
        "HOST": fw.HOST, "PORT": str(fw.PORT),
        "CONN_MAX_AGE": None,
        "OPTIONS": {"application_name": "fw-django", "options": f"-c search_path={SCHEMA},public"},
    }},
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.apps import apps  # noqa: E402
from django.db import connection, models, transaction  # noqa: E402


class Item(models.Model):
    worker = models.IntegerField()
    n = models.IntegerField()

    class Meta:
        app_label = "fwapp"


# The app has no models module of its own: this script is it (run_syncdb looks there).
apps.get_app_config("fwapp").models_module = sys.modules[__name__]
call_command("migrate", run_syncdb=True, verbosity=0)

tally = fw.Tally()
lock = threading.Lock()
done = threading.Event()
release = threading.Event()
barrier = threading.Barrier(fw.WORKERS + 1)
# Workers keep their connections (Django's are per thread) until the test's go-ahead: this
# barrier tells the main thread that they are done with their share.
finished = threading.Barrier(fw.WORKERS + 1)


def worker(w):
    connection.ensure_connection()
    barrier.wait()
    for i in range(fw.PER_WORKER):
        if not fw.in_time():
            break
        try:
            with transaction.atomic():
                Item.objects.create(worker=w, n=i)
                count = Item.objects.filter(worker=w).count()
                with connection.cursor() as cur:
                    cur.execute("SELECT current_setting('statement_timeout'), "
                                "current_setting('TimeZone'), current_schema()")
                    timeout, tz, schema = cur.fetchone()
            with lock:
                if schema != SCHEMA:
                    tally.error(f"worker {w} txn {i}: current_schema {schema!r}, options set {SCHEMA}")
                elif tz != TIME_ZONE:
                    tally.error(f"worker {w} txn {i}: TimeZone {tz!r}, Django set {TIME_ZONE}")
                elif fw.check_txn(tally, w, i, count, timeout):
                    tally.committed += 1
        except Exception as e:  # noqa: BLE001
            with lock:
                tally.error(repr(e))
    finished.wait()
    release.wait()
    connection.close()


def own():
    with connection.cursor() as cur:
        cur.execute(f"SET statement_timeout = '{fw.OWN_TIMEOUT}'")
    barrier.wait()
    while True:
        finished = done.is_set()
        try:
            with connection.cursor() as cur:
                cur.execute("SHOW statement_timeout")
                (timeout,) = cur.fetchone()
            with lock:
                fw.check_own(tally, timeout)
        except Exception as e:  # noqa: BLE001
            with lock:
                tally.error(repr(e))
        if finished:
            break
        done.wait(0.02)
    release.wait()
    connection.close()


threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(fw.WORKERS)]
owner = threading.Thread(target=own, daemon=True)
for t in threads + [owner]:
    t.start()
finished.wait()
done.set()
rows = Item.objects.count()
fw.report("django", tally, rows, fw.CONNS + 1)
fw.hold()
release.set()
for t in threads + [owner]:
    t.join()
connection.close()
