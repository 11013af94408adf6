"""``taonet host ...`` and ``taonet run|list|stop|kill`` as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PASSWORD = "host and policy password"


def taonet(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taonet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def detached(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command whose program keeps our stdout and stderr: capture into files."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(
            [sys.executable, "-m", "taonet", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            timeout=60,
            check=False,
            env=env,
        ).returncode
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, code, out.read(), err.read())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def host_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A domain whose guard lets two scripts execute, and a root host started for it."""
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "exits3").write_text('#!/bin/sh\necho "hello from $(id -u) in $(pwd)"\nexit 3\n')
    (bin_dir / "sleeper").write_text("#!/bin/sh\nexec sleep 600\n")
    (bin_dir / "unlisted").write_text("#!/bin/sh\necho should not run\n")
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    domain = tmp_path / "domain"
    ok(taonet("domain", "init", str(domain), "--password-file", str(pw)))
    for name in ("exits3", "sleeper"):
        ok(
            taonet(
                "domain",
                "policy",
                "--domain",
                str(domain),
                "--add-program",
                str(bin_dir / name),
                "--password-file",
                str(pw),
            )
        )
    env = dict(os.environ, TAO_DOMAIN=str(domain), TAONET_LOG="warning")
    env.pop("TAO_HOST", None)
    out = ok(
        taonet(
            "host",
            "init",
            "--root",
            "--password-file",
            str(pw),
            "--policy-password-file",
            str(pw),
            env=env,
        )
    )
    assert "certified by the policy key" in out
    out = ok(taonet("host", "start", "--password-file", str(pw), env=env))
    assert "started" in out
    env["BIN"] = str(bin_dir)
    try:
        yield env
    finally:
        taonet("host", "stop", env=env, timeout=60)


def test_run_list_stop_kill_and_host_stop(host_env: dict[str, str], tmp_path: Path) -> None:
    env = host_env
    bin_dir = Path(env["BIN"])
    out = ok(taonet("host", "show", env=env))
    assert "kind:           root" in out
    assert "running as key([" in out

    result = subprocess.run(
        [sys.executable, "-m", "taonet", "run", "--wait", str(bin_dir / "exits3")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr
    assert f"hello from {os.getuid()} in {tmp_path}" in result.stdout
    assert ".Program([" in result.stderr

    refused = taonet("run", str(bin_dir / "unlisted"), env=env)
    assert refused.returncode == 4  # refused: the guard said no
    assert "does not authorize" in refused.stderr
    assert "Traceback" not in refused.stderr

    ok(detached("run", str(bin_dir / "sleeper"), env=env))
    ok(detached("run", str(bin_dir / "sleeper"), env=env))
    header, *listing = ok(taonet("list", env=env)).splitlines()
    assert header.split() == ["ID", "PID", "USER", "STARTED", "FILE"]
    assert len(listing) == 2
    pids = [line.split()[1] for line in listing]
    assert ok(taonet("stop", pids[0], env=env)).startswith("stopped ")
    principal = json.loads(ok(taonet("list", "-o", "json", env=env)))["programs"][0]["principal"]
    # A full principal selects every running instance of that program.
    killed = ok(taonet("kill", principal, env=env))
    assert f"(pid {pids[1]})" in killed
    missing = taonet("stop", "999999999", env=env)
    assert missing.returncode == 3  # not found
    assert "no hosted program" in missing.stderr

    assert "stopped" in ok(taonet("host", "stop", env=env))
    out = ok(taonet("host", "show", env=env))
    assert "not running" in out
    gone = taonet("list", env=env)
    assert gone.returncode == 5  # unavailable
    assert "no Tao host is running" in gone.stderr


def test_host_commands_need_a_host(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TAO_DOMAIN", "TAO_HOST")}
    result = taonet("list", env=env)
    assert result.returncode == 2  # usage
    assert "--host DIR" in result.stderr
    result = taonet("host", "show", "--host", str(tmp_path), env=env)
    assert result.returncode == 1
    assert "not a Linux host directory" in result.stderr
    for args in (("host", "show"), ("list",), ("stop", "x"), ("host", "stop")):
        result = taonet(*args, "--host", str(tmp_path / "missing"), env=env)
        assert result.returncode == 3, (args, result.stderr)  # not found
        assert "no Linux host directory at" in result.stderr
