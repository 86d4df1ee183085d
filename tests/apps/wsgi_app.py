"""A Flask app embedding a leasectl App, as the docs' gunicorn recipe does.

Run by the tests as ``gunicorn -c tests/apps/gunicorn_conf.py -w 2 tests.apps.wsgi_app:web``:
each worker is a replica; ``stamp`` (leased) writes one fenced row per slot on one of them.
"""

from __future__ import annotations

from flask import Flask

from leasectl import App, TickContext
from leasectl.integrations.wsgi import mount

#: Created by the test before the server starts.
CREATE = (
    "CREATE TABLE IF NOT EXISTS wsgi_rows "
    "(slot timestamptz, replica text, epoch bigint, at timestamptz DEFAULT now())"
)

jobs = App()


@jobs.loop(every=1, leased=True, jitter=0.0)
def stamp(ctx: TickContext) -> None:
    with ctx.transaction() as cur:
        cur.execute(
            "INSERT INTO wsgi_rows (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


web = Flask(__name__)
mount(web, jobs, prefix="/leasectl")


@web.get("/whoami")
def whoami() -> dict[str, object]:
    return {"replica": jobs.replica_id, "leads_stamp": jobs.is_leader("stamp")}
