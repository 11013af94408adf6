"""Fixtures shared by the example tests: the demo run twice in one directory, and the
``taonet demo`` command in a real process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest

from taonet.crypto import KdfParams

#: ``run_demo`` or ``run_hosted_demo``: a demo run in a directory, its secret returned.
Demo = Callable[..., Awaitable[bytes]]


@attrs.frozen
class TwoRuns:
    """What a demo said on its first run in a directory, and on its second, and the
    secret its client got each time (the operator rotates it in every run, so the
    second run's client gets the epoch the first run rotated to)."""

    secrets: tuple[bytes, bytes]
    first: list[str]
    second: list[str]


#: The ``run_twice`` fixture.
RunTwice = Callable[[Demo], Awaitable[TwoRuns]]
#: The ``taonet_demo`` fixture: ``taonet_demo(*args, timeout=...)``.
TaonetDemo = Callable[..., None]


@pytest.fixture
def run_twice(tmp_path: Path) -> RunTwice:
    """Run a demo twice in ``tmp_path`` (the first time creating everything, with a cheap
    KDF); each run gives the client a 32-byte secret, a new one in the second run
    (the first run's rotation)."""

    async def run(demo: Demo) -> TwoRuns:
        first: list[str] = []
        second: list[str] = []
        secret1 = await demo(tmp_path, say=first.append, kdf=KdfParams.for_tests())
        secret2 = await demo(tmp_path, say=second.append)
        assert len(secret1) == len(secret2) == 32
        assert secret1 != secret2
        return TwoRuns((secret1, secret2), first, second)

    return run


@pytest.fixture
def taonet_demo(tmp_path: Path) -> TaonetDemo:
    """Run ``taonet demo --dir DIR *args`` in a real process (killed after ``timeout``
    seconds); it must succeed, its client must receive the secret, simpleserver must hear
    of the operator's rotation by its watch, and nothing may print a traceback."""

    def run(*args: str, timeout: float) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "taonet", "demo", *args, "--dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "[simpleclient] received the secret" in result.stdout
        assert "[operator] rotated /simpleexample/secret to epoch 2" in result.stdout
        assert "[simpleserver] watch: /simpleexample/secret rotated (epoch 2)" in result.stdout
        assert "Traceback" not in result.stderr
        assert "Traceback" not in result.stdout

    return run
