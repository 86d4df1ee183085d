"""Loops for the CLI tests: two leased loops (alpha, beta) and one everywhere loop.

Selected with ``scheduler.loops_package: tests.cli.cluster_loops``. The ticks do nothing but
check their lease, so the tests measure lease movement, not loop work.
"""
