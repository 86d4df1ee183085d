"""Flags shared by every subcommand, and ``add_argument`` with ``LEASECTL_*`` env defaults.

Every flag can also be set through a ``LEASECTL_<NAME>`` environment variable, so that a
container or a systemd unit configures the command without a wrapper script; ``--help``
names the variable next to each flag.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from leasectl.config import load_settings
from leasectl.settings import Settings


def env_default(name: str, default: Any = None) -> Any:
    """``LEASECTL_<name>`` from the environment, or ``default``."""
    return os.environ.get(f"LEASECTL_{name}", default)


def add_argument(parser: argparse.ArgumentParser, *flags: str, env: str, **kwargs: Any) -> None:
    """``add_argument`` that also reads ``LEASECTL_<env>`` and says so in --help."""
    default = kwargs.pop("default", None)
    value = env_default(env, default)
    if kwargs.get("action") == "store_true":
        value = str(value).lower() in ("1", "true", "yes") if value is not None else False
    elif value is not None and "type" in kwargs and isinstance(value, str):
        value = kwargs["type"](value)
    help_text = kwargs.pop("help", "")
    kwargs["help"] = f"{help_text} [env LEASECTL_{env}]"
    parser.add_argument(*flags, default=value, **kwargs)


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--dsn`` and ``-v``: every subcommand takes them."""
    add_argument(parser, "--config", env="CONFIG", help="YAML configuration file")
    add_argument(parser, "--dsn", env="DSN", help="PostgreSQL DSN (default: embedded server)")
    add_argument(parser, "-v", "--verbose", env="VERBOSE", action="store_true", help="debug logs")


def dsn_override(args: argparse.Namespace) -> dict[str, Any]:
    """The ``database.dsn`` override ``--dsn`` asks for (empty when not given)."""
    return {"database.dsn": args.dsn} if getattr(args, "dsn", None) else {}


def settings_from(
    args: argparse.Namespace, *, loops: bool = True, unset_secrets: str | None = None
) -> Settings:
    """The settings ``--config`` / ``--dsn`` (and the environment) describe.

    ``loops=False`` skips the ``loops:`` section; ``unset_secrets="loops"`` validates it but
    leaves secrets whose variable is not set unresolved: only ``run``, ``demo``, ``drill``
    and ``config check`` need the loops' secrets (see :func:`leasectl.config.load_settings`).
    """
    return load_settings(
        args.config,
        overrides=dsn_override(args) or None,
        loops=loops,
        unset_secrets=unset_secrets,
    )
