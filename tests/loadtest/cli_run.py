"""Running ``taonet loadtest`` as a real subprocess and stopping it as a terminal's
Ctrl-C would: the tests of the CLI, ``--quick`` and PostgreSQL runs share these."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def loadtest_process(
    *argv: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``taonet loadtest ARGV`` in a session of its own, logging JSON at info on
    standard error (so :func:`until_measuring` can read it), with ``env`` added to
    the environment; killed if still running when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "taonet", "loadtest", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json", **(env or {})},
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def until_measuring(process: subprocess.Popen[str]) -> list[str]:
    """Read the run's log until its first ``loadtest_measuring`` line (the lines read,
    that one last); AssertionError if the run ends first. Bounded: every run the
    tests start ends by itself within minutes."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "loadtest_measuring" in line:
            return seen
    raise AssertionError(f"the run never measured: {process.communicate(timeout=60)}")


def interrupt(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT to the run's process group, as Ctrl-C; what it then wrote (stdout,
    the rest of stderr)."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=60)
