"""The App a Django project runs, from ``settings.LEASECTL`` and ``settings.DATABASES``."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import make_conninfo

from leasectl.app import App, load_app
from leasectl.errors import ConfigError

_KEYS = {"APP", "DSN", "CONFIG", "REPLICA_ID", "METRICS_LISTEN"}


def database_dsn(databases: dict[str, Any]) -> str | None:
    """``DATABASES["default"]`` as a libpq DSN when it is PostgreSQL, else None."""
    db = databases.get("default") or {}
    if "postgresql" not in str(db.get("ENGINE", "")):
        return None
    parts = {
        "dbname": db.get("NAME"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
        "host": db.get("HOST"),
        "port": db.get("PORT"),
    }
    return make_conninfo(**{k: str(v) for k, v in parts.items() if v not in (None, "")})


def app_from_settings(settings: Any) -> App:
    """The configured App, with DSN / config / replica id / metrics port applied.

    :raises ConfigError: ``LEASECTL`` missing, unknown keys, or ``APP`` not an App.
    """
    conf = getattr(settings, "LEASECTL", None)
    if not isinstance(conf, dict) or "APP" not in conf:
        raise ConfigError(
            'settings.LEASECTL must be a dict with "APP": "module:attribute" naming your '
            f"leasectl.App (got {conf!r})"
        )
    unknown = sorted(set(conf) - _KEYS)
    if unknown:
        raise ConfigError(
            f"settings.LEASECTL: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_KEYS))}"
        )
    app = load_app(str(conf["APP"]))
    dsn = conf.get("DSN") or database_dsn(getattr(settings, "DATABASES", {}))
    app.configure(
        config=conf.get("CONFIG"),
        dsn=dsn,
        replica_id=conf.get("REPLICA_ID"),
        metrics_listen=conf.get("METRICS_LISTEN"),
    )
    return app
