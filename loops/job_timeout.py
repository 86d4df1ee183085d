"""job_timeout: fail jobs stuck in a waiting or running state, each arm one guarded UPDATE.

One tick runs three statements, each ``UPDATE leasectl_certs.jobs ... WHERE status = <state> AND
<age> ...`` with its audit rows written by the same statement (no read-then-write, certctl
defect #9):

- AwaitingCSR older than ``jobs.awaiting_csr_timeout`` and AwaitingApproval older than
  ``jobs.awaiting_approval_timeout``, measured from entering the state (``status_changed_at``);
- Running jobs whose agent's last heartbeat is older than ``jobs.agent_offline_ttl``;
- server-side Running jobs older than ``jobs.running_timeout`` (their processor crashed or hung:
  failing them hands them to job_retry, so a crash loses no job).

Why ``everywhere`` is safe: PostgreSQL re-evaluates an UPDATE's WHERE on the newest version of
a row it has to wait for, so a job that moved on (approved, completed) concurrently is not
touched, and two replicas reaping at once fail (and audit) each job once.
"""

from __future__ import annotations

from leasectl.certs._common import actor, duration_label, everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("job_timeout", package="leasectl.certs.sql")

NAME = "job_timeout"
TIMEOUT = 120.0


def run(ctx: TickContext) -> None:
    """One tick: the three reaping statements, each in its own short transaction."""
    jobs = ctx.config.jobs
    who = actor(ctx)
    arms: list[tuple[str, dict[str, object]]] = [
        (
            "reap_awaiting",
            {
                "csr_seconds": float(jobs.awaiting_csr_timeout),
                "csr_label": duration_label(jobs.awaiting_csr_timeout),
                "approval_seconds": float(jobs.awaiting_approval_timeout),
                "approval_label": duration_label(jobs.awaiting_approval_timeout),
            },
        ),
        (
            "reap_offline_agents",
            {
                "ttl_seconds": float(jobs.agent_offline_ttl),
                "ttl_label": duration_label(jobs.agent_offline_ttl),
            },
        ),
        (
            "reap_running",
            {
                "running_seconds": float(jobs.running_timeout),
                "running_label": duration_label(jobs.running_timeout),
            },
        ),
    ]
    for query, params in arms:
        ctx.check()
        with transaction(ctx) as cur:
            cur.execute(Q[query], {**params, "actor": who})
            ctx.count(query, len(cur.fetchall()))


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.jobs.timeout.enabled`` is false."""
    return everywhere(
        NAME,
        settings.jobs.timeout,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="fail AwaitingCSR/AwaitingApproval/Running jobs past their timeouts",
    )
