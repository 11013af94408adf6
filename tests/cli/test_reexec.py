"""Issue 8, item 1: a re-executed taonet runs no code from the caller's directory or
environment. Each test plants code where an attacker could (the directory root starts
from, PYTHONPATH, sitecustomize, the modules the command imports next) that writes a
marker file with whatever it can read on standard input (the host password), and
checks that the marker never appears and the command still works."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.cli_helpers import (
    PASSWORD,
    TAONET_SCRIPT,
    clean_env,
    host_pids,
    isolated,
    make_root_host,
    ok,
    plain,
    process_environment,
    run,
)

VECTOR_TEXT = "key([74657374206b6579]) speaksfor key([746573742074616f206b6579])"


def plant(directory: Path, marker: Path, *modules: str) -> None:
    """Make ``directory`` hold modules that steal standard input into ``marker``."""
    directory.mkdir(parents=True, exist_ok=True)
    body = (
        "import sys\n"
        f"with open({str(marker)!r}, 'a') as f:\n"
        "    f.write(__name__ + ': ' + (sys.stdin.read() if sys.stdin else '') + '\\n')\n"
    )
    for module in modules:
        path = directory / (module.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)


def attacker_directory(base: Path, marker: Path) -> Path:
    evil = base / "evil"
    plant(evil, marker, "taonet/__init__", "taonet/__main__", "trio", "attrs", "structlog")
    return evil


async def stop_host(env: dict[str, str]) -> None:
    ok(await run(isolated("host", "stop"), env=env))


async def test_host_start_from_a_hostile_directory_runs_none_of_its_code(
    tmp_path: Path,
) -> None:
    """Root types ``taonet host start`` in a directory another user can write."""
    env = await make_root_host(tmp_path)
    marker = tmp_path / "stolen"
    evil = attacker_directory(tmp_path, marker)
    assert TAONET_SCRIPT.is_file(), "the taonet console script of this environment"

    result = await run(
        [TAONET_SCRIPT, "host", "start", "--password-file", str(tmp_path / "pw")],
        env=env,
        cwd=evil,
    )
    try:
        assert result.returncode == 0, result
        assert "started (pid" in result.stdout
        assert not marker.exists(), marker.read_text()
        host_dir = Path(env["TAO_DOMAIN"]) / "linux_tao_host"
        [pid] = host_pids(host_dir)
        # The daemon does not even stay in the caller's directory.
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert "running as key([" in ok(await run(isolated("host", "show"), env=env, cwd=evil))
    finally:
        await stop_host(env)
    assert not marker.exists(), marker.read_text()


async def test_host_start_ignores_the_callers_python_environment(tmp_path: Path) -> None:
    """PYTHONPATH with a taonet package and a sitecustomize, and PYTHONSTARTUP, set for
    an (isolated) ``taonet host start``: the host it starts imports none of them."""
    env = await make_root_host(tmp_path)
    marker = tmp_path / "stolen"
    pythonpath = tmp_path / "pythonpath"
    plant(pythonpath, marker, "taonet/__init__", "taonet/__main__", "sitecustomize", "startup")
    env.update(PYTHONPATH=str(pythonpath), PYTHONSTARTUP=str(pythonpath / "startup.py"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = await run(
        isolated("host", "start", "--password-file", str(tmp_path / "pw")), env=env, cwd=workdir
    )
    try:
        assert result.returncode == 0, result
        assert not marker.exists(), marker.read_text()
        [pid] = host_pids(Path(env["TAO_DOMAIN"]) / "linux_tao_host")
        environ = process_environment(pid)
        assert not [v for v in environ if v.startswith((b"PYTHON", b"LD_"))], environ
    finally:
        await stop_host(env)
    assert not marker.exists(), marker.read_text()


async def test_python_m_taonet_ignores_modules_in_the_working_directory(tmp_path: Path) -> None:
    """``python -m taonet`` puts the directory first on sys.path: its trio.py, attrs.py
    and structlog.py must not be what the command imports."""
    marker = tmp_path / "stolen"
    evil = tmp_path / "evil"
    plant(evil, marker, "trio", "attrs", "structlog", "cryptography")
    result = await run(plain("auth", "parse", VECTOR_TEXT), env=clean_env(), cwd=evil)
    assert result.returncode == 0, result
    assert result.stdout == VECTOR_TEXT + "\n"
    assert not marker.exists(), marker.read_text()


async def test_hosted_taonet_runs_the_measured_code_whatever_the_callers_directory(
    tmp_path: Path,
) -> None:
    """A hosted program that is taonet itself (its console script, as the hosted demo
    and stacked hosts run it) started from a hostile directory with a hostile
    PYTHONPATH: the host drops PYTHON* and the script's ``#!`` interpreter puts only its
    own directory on sys.path, so the program is the code the domain authorized."""
    env = await make_root_host(tmp_path, TAONET_SCRIPT)
    marker = tmp_path / "stolen"
    evil = attacker_directory(tmp_path, marker)
    plant(evil, marker, "sitecustomize")
    pw = str(tmp_path / "pw")
    ok(await run(isolated("host", "start", "--password-file", pw), env=env))
    try:
        result = await run(
            isolated("run", "--wait", str(TAONET_SCRIPT), "auth", "parse", VECTOR_TEXT),
            env=dict(env, PYTHONPATH=str(evil)),
            cwd=evil,
            stdin=PASSWORD.encode(),
        )
        assert result.returncode == 0, result
        assert VECTOR_TEXT in result.stdout
        assert not marker.exists(), marker.read_text()
    finally:
        await stop_host(env)
