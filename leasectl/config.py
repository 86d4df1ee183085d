"""Configuration loading (placeholder until the full loader lands: defaults + DSN override)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leasectl.settings import CoreSettings, DatabaseSettings


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)

    @property
    def core(self) -> CoreSettings:
        return CoreSettings(database=self.database)


def load_settings(path: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    db = DatabaseSettings()
    if overrides and overrides.get("database.dsn"):
        db = DatabaseSettings(dsn=overrides["database.dsn"])
    return Settings(database=db)
