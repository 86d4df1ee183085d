"""tests/child_output.py: a child that prints far more than a pipe holds never blocks on it,
and a wait for its output fails with what it printed, not by hanging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.child_output import LineReader, OutputFile, exit_code, tail
from tests.conftest import wait_until

# 1 MiB on stdout and stderr, well past a pipe's 64 KiB, then a last line.
CHATTY = (
    "import sys\n"
    "for i in range(8192):\n"
    "    print('x' * 127)\n"
    "    print('y' * 127, file=sys.stderr)\n"
    "print('done', flush=True)\n"
)


def test_output_file_takes_everything_the_child_prints(tmp_path: Path) -> None:
    log = OutputFile(tmp_path / "chatty.log")
    proc = log.popen([sys.executable, "-c", CHATTY])
    assert exit_code(proc, 60, log) == 0, tail(log)
    lines = log.text().splitlines()
    assert len(lines) == 2 * 8192 + 1 and lines[-1] == "done"


def test_line_reader_drains_the_pipe_while_the_test_waits_for_a_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHATTY + "sys.stdin.read()\n"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        out = LineReader(proc.stdout)
        last = out.wait_for(lambda lines: "done\n" in lines and lines[-1], 60, "the last line")
        assert last == "done\n" and proc.poll() is None  # found while the child still runs
        proc.stdin.close()
        assert exit_code(proc, 60, out) == 0
        assert out.join(10) and len(out.lines()) == 2 * 8192 + 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_line_reader_fails_at_once_when_the_output_ends_without_the_line() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "print('starting'); raise SystemExit(3)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = LineReader(proc.stdout)
    with pytest.raises(AssertionError, match="(?s)the output ended before ready.*starting"):
        out.wait_for(lambda lines: "ready\n" in lines, 600, "ready")
    assert proc.wait(10) == 3


def test_exit_code_fails_with_the_tail_when_the_child_does_not_exit(tmp_path: Path) -> None:
    log = OutputFile(tmp_path / "stuck.log")
    proc = log.popen(
        [sys.executable, "-c", "print('stuck here', flush=True); input()"], stdin=subprocess.PIPE
    )
    try:
        wait_until(lambda: "stuck here" in log.text(), 60, what="the child's line in its file")
        with pytest.raises(AssertionError, match="(?s)still running 0.5s on.*stuck here"):
            exit_code(proc, 0.5, log)
    finally:
        proc.kill()
        proc.wait(10)
