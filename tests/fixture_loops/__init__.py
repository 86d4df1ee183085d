"""A tiny loops package for daemon tests: one leased loop, one everywhere loop.

Selected with ``scheduler.loops_package: tests.fixture_loops``; it follows the same contract
as ``loops/registry.py`` (SETTINGS_CLASS, LOOP_MODULES, build_loops).
"""
