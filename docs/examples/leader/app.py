"""A leader function: a long-running consumer that runs on exactly one replica at a time."""

import os
from pathlib import Path

from leasectl import App, LeaseHandle

app = App(migrations=[Path(__file__).with_name("migrations")])


@app.leader("consumer")
def consume(lease: LeaseHandle) -> None:
    # Started when this replica acquires lease "consumer"; lease.done is set when it must
    # stop (lease lost or stepped down, App stopping). It starts again when the lease returns.
    while not lease.done.wait(float(os.environ.get("CONSUME_EVERY", "1"))):
        with lease.transaction() as cur:  # fenced: commits only under the current epoch
            cur.execute(
                "INSERT INTO consumed (replica, epoch) VALUES (%s, %s)",
                (lease.replica_id, lease.epoch),
            )


if __name__ == "__main__":
    raise SystemExit(app.run())  # blocks; SIGTERM stops consume(), releases, exits 0
