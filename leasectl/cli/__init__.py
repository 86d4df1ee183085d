"""The ``leasectl`` command line (``leasectl = "leasectl.cli:main"``).

:mod:`~leasectl.cli.main` assembles the parser and handles errors once;
:mod:`~leasectl.cli.exit_codes` is the exit-code table; :mod:`~leasectl.cli.args` the shared
flags and ``LEASECTL_*`` env defaults; one module per command (``add_<cmd>_parser`` and
``cmd_<cmd>``): migrate, run, status, step_down, evict, config, demo, drill.
"""

from __future__ import annotations

from leasectl.cli.main import main

__all__ = ["main"]
