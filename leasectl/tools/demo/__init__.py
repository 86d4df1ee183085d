"""``leasectl demo``: a local N-replica cluster on the embedded PostgreSQL, watched live.

Modules: :mod:`~leasectl.tools.demo.runner` (the :class:`Demo`: set-up, replicas, watch,
tear-down), :mod:`~leasectl.tools.demo.seed` (a small real dataset),
:mod:`~leasectl.tools.demo.smtp_sink` and :mod:`~leasectl.tools.demo.view` (what is shown).
The subcommand is :mod:`leasectl.cli.demo`.
"""
