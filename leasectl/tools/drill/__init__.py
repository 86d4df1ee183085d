"""Failover drills: ``leasectl drill`` injects faults into lease holders and measures recovery.

Modules: :mod:`~leasectl.drill.cli` (the subcommand), :mod:`~leasectl.drill.runner` (set-up,
rounds, clean-up), :mod:`~leasectl.drill.rounds` (one round), :mod:`~leasectl.drill.faults`,
:mod:`~leasectl.drill.netns` (real partitions), :mod:`~leasectl.drill.cluster` (replica
processes and their JSON logs), :mod:`~leasectl.drill.sink` (webhook receiver),
:mod:`~leasectl.drill.feed`, :mod:`~leasectl.drill.invariants`, :mod:`~leasectl.drill.stats`
and :mod:`~leasectl.drill.report`. See docs/failover-drills.md.
"""

from __future__ import annotations

from leasectl.drill.cli import register

__all__ = ["register"]
