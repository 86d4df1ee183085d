"""Flask with leasectl under gunicorn: each worker is a replica (see gunicorn.conf.py)."""

from pathlib import Path

from flask import Flask

from leasectl import App, TickContext
from leasectl.integrations.wsgi import mount

jobs = App(migrations=[Path(__file__).with_name("migrations")])


@jobs.loop(every=1, leased=True, jitter=0.0)
def stamp(ctx: TickContext) -> None:
    with ctx.transaction() as cur:  # fenced: commits only under the current epoch
        cur.execute(
            "INSERT INTO stamps (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


web = Flask(__name__)
mount(web, jobs, prefix="/leasectl")  # /leasectl/metrics, /leasectl/healthz, /leasectl/readyz


@web.get("/whoami")
def whoami() -> dict[str, object]:
    return {"replica": jobs.replica_id, "leads_stamp": jobs.is_leader("stamp")}
