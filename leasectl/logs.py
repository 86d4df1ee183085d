"""Log formatting: human-readable by default, one JSON object per line with ``--log-format json``.

Every lease transition and tick carries stable ``action`` names and fields (lease, epoch,
replica, reason, loop, outcome) so drills, tests and log pipelines can grep them.
"""

from __future__ import annotations

import json
import logging
import sys

FIELDS = (
    "action",
    "lease",
    "epoch",
    "replica",
    "reason",
    "loop",
    "outcome",
    "tick_at",
    "seconds",
    "holder",
    "backend_pid",
)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [f"{k}={record.__dict__[k]}" for k in FIELDS if record.__dict__.get(k) is not None]
        return f"{base} [{' '.join(extras)}]" if extras else base


def setup(fmt: str = "text", level: str = "INFO") -> None:
    """Configure the root logger once for the daemon (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
