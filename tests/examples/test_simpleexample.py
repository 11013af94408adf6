"""simpleexample end to end: initialization, then operation from sealed state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from taonet.crypto import KdfParams
from taonet_examples.simpleexample.demo import run_demo


async def test_two_runs_initialize_then_reuse_sealed_state(tmp_path: Path) -> None:
    first: list[str] = []
    second: list[str] = []
    with trio.fail_after(60):
        secret1 = await run_demo(tmp_path, say=first.append, kdf=KdfParams.for_tests())
        secret2 = await run_demo(tmp_path, say=second.append)
    assert secret1 == secret2
    assert any(line.startswith("== Initialization") for line in first)
    assert any("issued certificate serial" in line for line in first)
    assert any(line.startswith("== Operation") for line in second)
    assert not any("issued certificate serial" in line for line in second)
    assert any("unsealed key and certificate" in line for line in second)
    assert any("the guard allows it" in line for line in second)


def test_taonet_demo_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taonet", "demo", "--dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[simpleclient] received the secret" in result.stdout
    assert "Traceback" not in result.stderr
