"""simpleexample with every program a child process of a Linux host."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import trio

from taonet.crypto import KdfParams
from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_examples.simpleexample.hosted import run_hosted_demo


def _hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_hosted_demo_runs_twice_with_names_from_host_and_hashes(tmp_path: Path) -> None:
    first: list[str] = []
    second: list[str] = []
    with trio.fail_after(120):
        secret1 = await run_hosted_demo(tmp_path, say=first.append, kdf=KdfParams.for_tests())
        secret2 = await run_hosted_demo(tmp_path, say=second.append)
    assert secret1 == secret2
    assert len(secret1) == 32
    host = next(line for line in first if line.startswith("== Linux host "))
    host_name = re.search(r"key\(\[[0-9a-f]+\]\)", host)
    assert host_name is not None
    for module, label in ((simpleserver, "simpleserver"), (simpleclient, "simpleclient")):
        expected = f"{host_name.group(0)}.Program([{_hash(module.__file__ or '')}])"
        assert f"[{label}] my Tao name is {expected}" in first
        assert f"[{label}] my Tao name is {expected}" in second
    assert any("issued certificate serial" in line for line in first)
    assert not any("issued certificate serial" in line for line in second)
    assert any("[simpleclient] unsealed key and certificate" in line for line in second)
    assert any("[simpleserver] the guard allows it" in line for line in second)


def test_taonet_demo_hosted_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taonet", "demo", "--hosted", "--dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[simpleclient] received the secret" in result.stdout
    assert "Traceback" not in result.stderr
