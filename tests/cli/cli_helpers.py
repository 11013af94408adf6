"""Running the ``taonet`` command as a user (or an attacker) would: real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from taonet.cli import main

#: Bound on one command; nothing here should come near it.
COMMAND_TIMEOUT = 120
PASSWORD = "host and policy password"
#: The ``taonet`` console script of this environment (what ``pip install`` made).
TAONET_SCRIPT = Path(sys.executable).parent / "taonet"


def isolated(*args: str) -> list[str]:
    """``python -I -m taonet ARGS``: a command line no directory or PYTHON* variable sways."""
    return [sys.executable, "-I", "-m", "taonet", *args]


def plain(*args: str) -> list[str]:
    """``python -m taonet ARGS``."""
    return [sys.executable, "-m", "taonet", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without PYTHON* and TAO_* variables, logging only warnings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TAO_", "CLOUDPROXY_"))
    }
    env["TAONET_LOG"] = "warning"
    env.update(extra)
    return env


@attrs.frozen
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes = b"",
    stdout: int | None = subprocess.PIPE,
) -> Result:
    """Run a command to its end (bounded), its output as text; ``stdout`` may be an fd."""
    # trio refuses stdout= together with capture_stdout=True: pass only one of them.
    options: dict[str, Any] = (
        {"capture_stdout": True} if stdout == subprocess.PIPE else {"stdout": stdout}
    )
    with trio.fail_after(COMMAND_TIMEOUT):
        proc = await trio.run_process(
            [os.fspath(a) for a in argv],
            stdin=stdin,
            capture_stderr=True,
            check=False,
            env=dict(env) if env is not None else clean_env(),
            cwd=cwd,
            **options,
        )
    return Result(
        proc.returncode,
        (proc.stdout or b"").decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def taonet_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``taonet ARGS`` in this process: its exit status, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def password_file(directory: Path, password: str = "s3cret pass") -> Path:
    """``directory/pw`` holding ``password`` and a newline, as an operator writes one."""
    path = directory / "pw"
    path.write_text(password + "\n")
    return path


def init_domain(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> tuple[str, str]:
    """``taonet domain init DIRECTORY ARGS`` in this process, with a :func:`password_file`
    beside it: (directory, password file), as strings."""
    pw = str(password_file(directory.parent))
    code, _, err = taonet_main(
        capsys, "domain", "init", str(directory), *args, "--password-file", pw
    )
    assert code == 0, err
    return str(directory), pw


def policy(capsys: pytest.CaptureFixture[str], d: str, pw: str, *args: str) -> tuple[int, str, str]:
    """``taonet domain policy --domain D ARGS --password-file PW`` in this process."""
    return taonet_main(capsys, "domain", "policy", "--domain", d, *args, "--password-file", pw)


def ok(result: Result) -> str:
    assert result.returncode == 0, result
    return result.stdout


def one_line_error(result: Result, *expected: str, returncode: int = 1) -> str:
    """Assert the command failed with exactly one ``taonet: error:`` line on stderr
    and ``returncode`` (see the table in ``taonet --help``: 1 error, 2 usage, 3 not
    found, 4 refused, 5 unavailable)."""
    assert result.returncode == returncode, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("taonet: error: "), result.stderr
    line = result.stderr.strip()
    for text in expected:
        assert text in line, line
    return line


async def make_domain(base: Path, *programs: Path, env: Mapping[str, str] | None = None) -> Path:
    """A domain in ``base/domain`` whose guard lets ``programs`` execute; its password file
    is ``base/pw``."""
    pw = base / "pw"
    pw.write_text(PASSWORD + "\n")
    domain = base / "domain"
    ok(await run(isolated("domain", "init", str(domain), "--password-file", str(pw)), env=env))
    for program in programs:
        ok(
            await run(
                isolated(
                    "domain",
                    "policy",
                    "--domain",
                    str(domain),
                    "--add-program",
                    str(program),
                    "--password-file",
                    str(pw),
                ),
                env=env,
            )
        )
    return domain


async def make_root_host(base: Path, *programs: Path) -> dict[str, str]:
    """A domain and a root host for it (not started); the environment that names them."""
    domain = await make_domain(base, *programs)
    env = clean_env(TAO_DOMAIN=str(domain))
    pw = str(base / "pw")
    ok(
        await run(
            isolated("host", "init", "--root", "--password-file", pw, "--policy-password-file", pw),
            env=env,
        )
    )
    return env


def host_pids(host_dir: Path) -> list[int]:
    """The pids of the ``host start --foreground`` processes serving ``host_dir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in argv and os.fsencode(host_dir.resolve()) in argv:
            pids.append(int(entry.name))
    return sorted(pids)


def process_environment(pid: int) -> list[bytes]:
    """The ``NAME=value`` entries of a process's environment."""
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
