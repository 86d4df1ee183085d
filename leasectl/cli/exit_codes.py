"""The exit codes of every ``leasectl`` command, in one table.

docs/operator/running-a-cluster.md shows the same table (tests/cli/test_cli_failures.py
checks that the two agree).

====  =====================================================================================
code  meaning
====  =====================================================================================
0     success (``status``: every expected lease held; ``run``: a clean stop after SIGTERM;
      ``timing``: the safety inequality holds; ``drill``: all invariants hold)
1     a check failed (``status`` found a lease unheld or stale, ``step-down`` saw nothing
      move, ``evict`` found nothing to evict, ``migrate --status`` found a changed
      migration, ``timing`` found the safety inequality violated), or a runtime failure
      stopped ``run`` after it had started (the lease manager or a loop thread died)
2     cannot start / could not do the work, with the cause on one line: bad configuration,
      database unavailable, wrong password, unknown database, not migrated, a migration
      that failed or whose applied file changed (checksum), the safety inequality refused
      at start, a replica id that is already live, the metrics port in use, a data
      directory that cannot be written
3     ``drill``: an invariant failed
4     ``run`` with ``replica.on_wedged: exit``: a tick outlived its timeout + wedge_grace;
      the replica released its leases and left for its supervisor to restart it
130   interrupted (Ctrl-C / SIGTERM before the work was done, e.g. during ``migrate``: the
      migration in progress is rolled back; ``run``: a second signal)
141   the output pipe was closed early (``leasectl migrate --status | head``), as a Unix
      tool killed by SIGPIPE
====  =====================================================================================

``leasectl run`` keeps its own constants in :mod:`leasectl.daemon` with the same values.
"""

from __future__ import annotations

OK = 0
CHECK_FAILED = 1
RUNTIME = 1
CANNOT_START = 2
INVARIANT_FAILED = 3
WEDGED = 4
INTERRUPTED = 130
PIPE_CLOSED = 141

#: code → short meaning, for the docs check (the table above is the long form).
TABLE: dict[int, str] = {
    OK: "success",
    CHECK_FAILED: "a check failed, or a runtime failure stopped `run`",
    CANNOT_START: "cannot start / could not do the work (cause on one line)",
    INVARIANT_FAILED: "`drill`: an invariant failed",
    WEDGED: "`run` with `replica.on_wedged: exit`: a tick wedged",
    INTERRUPTED: "interrupted (Ctrl-C / SIGTERM before the work was done)",
    PIPE_CLOSED: "the output pipe was closed early (`| head`)",
}
