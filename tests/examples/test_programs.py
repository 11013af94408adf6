"""simpleserver and simpleclient run as programs: errors are one line, not a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio

from taonet_examples.simpleexample import simpleclient, simpleserver


@pytest.mark.parametrize("program", [simpleserver, simpleclient])
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "no domain"),  # the domain directory is missing
        ({"TAONET_LOG": "loud"}, "TAONET_LOG: unknown log level 'loud'"),
    ],
)
async def test_an_error_is_one_line(
    tmp_path: Path, program: ModuleType, env: dict[str, str], expected: str
) -> None:
    path = Path(program.__file__ or "")
    argv = [sys.executable, str(path), "--domain", str(tmp_path / "none")]
    argv += ["--state", str(tmp_path), "--domain-service", "127.0.0.1:1"]
    if program is simpleclient:
        argv += ["--server", "127.0.0.1:2"]
    else:
        argv += ["--secret-server", "127.0.0.1:3"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TAONET_", "CLOUDPROXY_"))}
    with trio.fail_after(60):
        result = await trio.run_process(
            argv, env={**clean, **env}, capture_stdout=True, capture_stderr=True, check=False
        )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"{path.name}: error: "), stderr
    assert expected in stderr
