"""Configuration loading (interim: defaults + DSN override; the YAML loader replaces this)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from leasectl.settings import Settings


def load_settings(path: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    settings = Settings()
    if overrides and overrides.get("database.dsn"):
        settings = replace(settings, database=replace(settings.database, dsn=overrides["database.dsn"]))
    return settings
