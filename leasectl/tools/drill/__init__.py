"""Failover drills: ``leasectl drill`` injects faults into lease holders and measures recovery.

Modules: :mod:`~leasectl.tools.drill.runner` (set-up, rounds, clean-up),
:mod:`~leasectl.tools.drill.rounds` (one round), :mod:`~leasectl.tools.drill.faults`,
:mod:`~leasectl.tools.drill.netns` (real partitions), :mod:`~leasectl.tools.drill.cluster`
(replica processes and their JSON logs), :mod:`~leasectl.tools.drill.feed`,
:mod:`~leasectl.tools.drill.invariants`, :mod:`~leasectl.tools.drill.stats` and
:mod:`~leasectl.tools.drill.report`. The subcommand is :mod:`leasectl.cli.drill`; the webhook
receiver is the tools' shared :mod:`leasectl.tools.webhook_sink`. See docs/failover-drills.md.
"""
