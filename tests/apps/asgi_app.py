"""A FastAPI app embedding a leasectl App, as the docs' recipe does (tests run it in uvicorn).

Each uvicorn worker process is a replica: ``stamp`` (leased) runs on one of them and writes
one fenced row per slot; ``/whoami`` says which replica answered.
"""

from __future__ import annotations

from fastapi import FastAPI

from leasectl import App, TickContext
from leasectl.integrations.asgi import install

#: Created by the test before the server starts.
CREATE = (
    "CREATE TABLE IF NOT EXISTS web_rows "
    "(slot timestamptz, replica text, epoch bigint, at timestamptz DEFAULT now())"
)

jobs = App()


@jobs.loop(every=1, leased=True, jitter=0.0)
def stamp(ctx: TickContext) -> None:
    with ctx.transaction() as cur:
        cur.execute(
            "INSERT INTO web_rows (slot, replica, epoch) VALUES (%s, %s, %s)",
            (ctx.tick_at, ctx.replica_id, ctx.epoch),
        )


api = FastAPI()
install(api, jobs, prefix="/leasectl", start_timeout=30)


@api.get("/whoami")
def whoami() -> dict[str, object]:
    return {"replica": jobs.replica_id, "leads_stamp": jobs.is_leader("stamp")}
