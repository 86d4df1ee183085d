"""The App a drill's replicas run when the drill needs a loop of its own: the ``wedge`` kind.

A wedged tick is a call that never returns and ignores cancellation. The drill cannot make a
real loop do that, so with ``wedge`` among its kinds its replicas run ``leasectl run --app
leasectl.tools.drill.drill_app:app``: the App under test (``$LEASECTL_DRILL_BASE_APP``, a
``MODULE:ATTR``; unset: the shipped loops, as plain ``leasectl run``) plus one drill-only
leased loop, :data:`~leasectl.tools.drill.wedge_loop.WEDGE_LOOP`. Only replicas import this
module (it builds the App at import); the drill itself reads :mod:`.wedge_loop`.
"""

from __future__ import annotations

import os

from leasectl.app import App, load_app
from leasectl.tools.drill.wedge_loop import wedge_spec

BASE_APP_ENV = "LEASECTL_DRILL_BASE_APP"


def build(base: str | None) -> App:
    """The App under test (``base``: ``MODULE:ATTR``; None: the shipped loops) plus the wedge
    loop."""
    if base:
        app = load_app(base)
    else:
        app = App()
        app.include("leasectl.certs")
    app.add(wedge_spec())
    return app


app = build(os.environ.get(BASE_APP_ENV) or None)
