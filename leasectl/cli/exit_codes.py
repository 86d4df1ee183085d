"""The exit codes of every ``leasectl`` command, in one table.

====  =====================================================================================
code  meaning
====  =====================================================================================
0     success (``status``: every expected lease held; ``run``: a clean stop; ``drill``: all
      invariants hold)
1     a check failed (``status`` found a lease unheld or stale, ``step-down`` saw nothing
      move, ``migrate --status`` found a changed migration), or a runtime failure stopped
      ``run`` (the lease manager or a loop thread died)
2     cannot start: bad configuration, database unavailable, not migrated
3     ``drill``: an invariant failed
4     ``run`` with ``replica.on_wedged: exit``: a tick outlived its timeout + wedge_grace;
      the replica released its leases and left for its supervisor to restart it
130   interrupted (Ctrl-C / SIGTERM before the work was done; ``run``: a second signal)
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
