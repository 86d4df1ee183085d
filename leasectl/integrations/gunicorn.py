"""gunicorn (sync workers and the others): one App per worker process, started after fork.

:Status: Beta

An App must start in the process that runs it: its threads and connections do not survive a
fork. gunicorn imports your app (in the master with ``--preload``, else in each worker) and
forks workers; these hooks start the App in every worker once it is initialised and stop it
when the worker exits (SIGTERM to the master: drain, release every lease with NOTIFY, exit).
Each worker is one replica; one of them runs each leased loop.

Example ``gunicorn.conf.py``::

    from leasectl.integrations.gunicorn import hooks

    post_worker_init, worker_exit = hooks("myservice.web:jobs", start_timeout=10)

and ``gunicorn -c gunicorn.conf.py -w 4 myservice.web:app``. A start slower than
``start_timeout`` goes on in the background; one that fails within it fails the worker's
boot (gunicorn then stops: a replica that cannot reach its database should not serve).
Needs the ``gunicorn`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leasectl.app import App, load_app
from leasectl.integrations.starter import Starter, endpoint_off


def hooks(
    target: str | App, *, start_timeout: float = 10.0, stop_grace: float | None = None
) -> tuple[Callable[[Any], None], Callable[[Any, Any], None]]:
    """``(post_worker_init, worker_exit)`` for a gunicorn config file.

    :param target: the App, or ``"module:attribute"`` naming it (imported in the worker).
    """
    starters: list[Starter] = []

    def post_worker_init(worker: Any) -> None:
        app = load_app(target) if isinstance(target, str) else target
        endpoint_off(app)  # the host app serves /metrics; no port per worker
        starter = Starter(app)
        starters.append(starter)
        starter.start(start_timeout)

    def worker_exit(server: Any, worker: Any) -> None:
        while starters:
            starters.pop().stop(stop_grace)

    return post_worker_init, worker_exit


__all__ = ["hooks"]
