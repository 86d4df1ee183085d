"""The certificate loops' migrations, for the demo and the drill (which run those loops)."""

from __future__ import annotations

import importlib

from leasectl.migrate import MigrationSource


def certs_migrations() -> MigrationSource:
    """``registry.MIGRATIONS`` of the certificate loops: their tables in ``leasectl_certs``.

    Imported when a demo or drill starts, so that loading the CLI never imports the loops.
    """
    registry = importlib.import_module("leasectl.certs.registry")
    source: MigrationSource = registry.MIGRATIONS
    return source
