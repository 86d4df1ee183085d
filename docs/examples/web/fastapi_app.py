"""FastAPI with leasectl: every uvicorn worker is a replica; one runs the leased loop."""

from pathlib import Path

from fastapi import FastAPI

from leasectl import App, TickContext
from leasectl.integrations.asgi import install

jobs = App(migrations=[Path(__file__).with_name("migrations")])


@jobs.loop(every=1, leased=True, jitter=0.0)
def stamp(ctx: TickContext) -> None:
    with ctx.transaction() as cur:  # fenced: commits only under the current epoch
        cur.execute(
            "INSERT INTO stamps (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


api = FastAPI()
# The App starts in the lifespan (never blocking start-up more than 30 s) and stops on
# shutdown; /leasectl/metrics, /leasectl/healthz and /leasectl/readyz become routes of `api`.
install(api, jobs, prefix="/leasectl", start_timeout=30)


@api.get("/whoami")
def whoami() -> dict[str, object]:
    return {"replica": jobs.replica_id, "leads_stamp": jobs.is_leader("stamp")}
