"""``taonet demo --tpm2`` end to end in a real process, on a real swtpm it starts.

Every name is rooted in the TPM (``tpm2([...]).PCRs(...)``), the programs get their
certificates (the quote key certified by the quote service, the host's PCRs trusted
by the domain), and swtpm is gone when the demo ends, also when it is interrupted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tpm2_fixtures import tpm2_or_skip

_SWTPM = re.compile(r"tpm: +swtpm:host=127\.0\.0\.1,port=\d+ \(pid (\d+)\)")


def _gone(pid: int) -> bool:
    """No such process, or one that has exited (a zombie: swtpm daemonizes, so it is
    reaped by whichever ancestor adopts it, not by the demo)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _demo(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "taonet", "demo", "--tpm2", "--dir", str(tmp_path / "d")]


def test_taonet_demo_tpm2(tmp_path: Path) -> None:
    tpm2_or_skip()
    result = subprocess.run(
        _demo(tmp_path), capture_output=True, text=True, timeout=300, check=False
    )
    out = result.stdout
    assert result.returncode == 0, (out[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr + out
    host = re.search(
        r"^== Linux host (tpm2\(\[[0-9a-f]{64}\]\)\.PCRs\(\"0,1,2,3,4,7\", \"[0-9a-f,]+\"\))",
        out,
        re.M,
    )
    assert host is not None, out[-3000:]
    name = host.group(1)
    assert f'guard rule:   Authorized({name}, "Host")' in out  # pinned to the host's TPM
    assert f"[simpleclient] my Tao name is {name}.Program([" in out
    assert "[simpleclient] received the secret" in out
    assert "[operator] rotated /simpleexample/secret to epoch 2" in out
    swtpm = _SWTPM.search(out)
    assert swtpm is not None
    assert "== swtpm stopped" in out
    assert _gone(int(swtpm.group(1)))


def test_an_interrupted_demo_stops_swtpm(tmp_path: Path) -> None:
    tpm2_or_skip()
    with subprocess.Popen(
        _demo(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as demo:
        assert demo.stdout is not None
        pid = None
        for line in demo.stdout:  # bounded by the demo's own steps (each fail_after'd)
            if (found := _SWTPM.search(line)) is not None:
                pid = int(found.group(1))
                demo.send_signal(signal.SIGINT)  # Ctrl-C, once swtpm runs
                break
        rest = demo.communicate(timeout=120)[0]
    assert pid is not None
    assert "== swtpm stopped" in rest
    assert _gone(pid)
    assert demo.returncode != 0


def test_a_rerun_clears_only_a_directory_the_demo_marked(tmp_path: Path) -> None:
    from taonet import ConfigError
    from taonet_examples.simpleexample.tpm2 import MARKER, _fresh

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a TPM demo directory"):
        _fresh(mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    demo = tmp_path / "demo"
    _fresh(demo)
    assert (demo / MARKER).exists()
    (demo / "swtpm").mkdir()
    (demo / "swtpm" / "state").write_text("an earlier TPM")
    (demo / "notes.txt").write_text("not the demo's")
    _fresh(demo)
    assert not (demo / "swtpm").exists()
    assert (demo / "notes.txt").exists()
