"""Registry of the CLI subcommands that live in their own modules.

Each entry is ``register(subparsers, add_common_flags)``; it adds a parser and sets
``handler`` (a function ``args -> exit code``). Keeping the list here lets each command's
parser live next to the code it drives.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Register = Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]

from leasectl import cli_config, cli_status, demo  # noqa: E402
from leasectl.cli import run  # noqa: E402
from leasectl.drill.cli import register as drill_register  # noqa: E402

REGISTER: list[Register] = [
    lambda sub, common: run.add_run_parser(sub),
    cli_status.register_status,
    cli_status.register_step_down,
    cli_status.register_evict,
    cli_config.register,
    demo.register,
    drill_register,
]
