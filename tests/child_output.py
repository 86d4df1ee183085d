"""A child process's output, kept where the child can always write it.

A pipe that nobody reads holds 64 KiB. A child that logs more blocks in ``write()``, in a
tick or in its shutdown after SIGTERM, and the test then fails or hangs for a reason of its
own making (test_rate_limits did, once, under a CPU hog). Two ways out, one per need:

- :class:`OutputFile`: stdout and stderr go to a file; the test reads it once the child
  has exited, and a failure shows its tail.
- :class:`LineReader`: a thread reads the pipe to its end while the child runs; the test
  waits for a line with a deadline, and the child never blocks on its output.

:func:`exit_code` waits for the exit and, when the child does not exit in time, fails with
what it printed last: a bare ``TimeoutExpired`` says nothing of where it hung.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

T = TypeVar("T")

TAIL_CHARS = 4000


class Output(Protocol):
    """What a child printed so far."""

    def text(self) -> str: ...


def tail(output: Output, chars: int = TAIL_CHARS) -> str:
    """The end of what a child printed, for an assertion message."""
    return output.text()[-chars:]


def exit_code(proc: subprocess.Popen[Any], timeout: float, output: Output) -> int:
    """``proc``'s exit code within ``timeout`` seconds; past it, an AssertionError carrying
    the tail of ``output`` (the child is left running for the test's own clean-up)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{proc.args!r} still running {timeout}s on; its output ends:\n{tail(output)}"
        ) from None


@dataclass(frozen=True)
class OutputFile:
    """One file that takes a child's stdout and stderr, interleaved as a terminal shows them."""

    path: Path

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``args`` writing into the file (the child keeps its own descriptor)."""
        with self.path.open("ab") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""


class LineReader:
    """Reads a child's text pipe to its end on a daemon thread, and lets a test wait for
    what it means to see there."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):  # the test closed the pipe: nothing more to read
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    def text(self) -> str:
        return "".join(self.lines())

    def wait_for(self, found: Callable[[list[str]], T | None], timeout: float, what: str) -> T:
        """The first truthy ``found(lines so far)``. Fails once ``timeout`` seconds pass, or
        at once when the pipe ends (the child exited) without it, showing the output."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = found(list(self._lines))
                if result:
                    return result
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "the output ended" if self._eof else f"{timeout}s passed"
                    raise AssertionError(
                        f"{why} before {what}; it ends:\n{''.join(self._lines)[-TAIL_CHARS:]}"
                    )
                self._cond.wait(left)

    def join(self, timeout: float) -> bool:
        """Whether the whole output was read (the child and every holder of the pipe exited)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
