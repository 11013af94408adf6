"""The README's hosted service (examples/hosted_service), run end to end as a user would.

The commands are the README's, run with the ``taonet`` console script in a fresh
directory holding a copy of the example: a root host that offers this environment's
Python, the service run once with ``--wait``, then left serving TCP and stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import trio

from tests.cli.cli_helpers import TAONET_SCRIPT, clean_env, run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hosted_service"
TIMEOUT = 120
#: The README's client: one line from the service.
CONNECT = (
    'import socket; print(socket.create_connection(("127.0.0.1", 8470)).makefile().readline(), '
    'end="")'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_the_hosted_service_example_runs_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(
        EXAMPLE, work / "examples" / "hosted_service", ignore=shutil.ignore_patterns("__pycache__")
    )
    (work / "host-password").write_text("a host password\n")
    taonet = str(TAONET_SCRIPT)
    env = clean_env()
    host = ["--host", "demo-host"]
    with trio.fail_after(TIMEOUT):
        init = await run(
            [
                taonet,
                "host",
                "init",
                "--root",
                "--liberal",
                *host,
                "--password-file",
                "host-password",
            ],
            env=env,
            cwd=work,
        )
        assert init.returncode == 0, init.stderr
        assert f"interpreter: python3 = {TAONET_SCRIPT.parent}" in init.stdout
        started = await run(
            [taonet, "host", "start", *host, "--password-file", "host-password"],
            env=env,
            cwd=work,
        )
        assert started.returncode == 0, started.stderr
        try:
            once = await run(
                [taonet, "run", *host, "--wait", "examples/hosted_service"], env=env, cwd=work
            )
            assert once.returncode == 0, once.stderr
            name = re.search(r"started (.+) \(pid (\d+)\)", once.stderr)
            assert name is not None, once.stderr
            assert ".ProgramTree([" in name.group(1)
            lines = once.stdout.splitlines()
            assert lines[:2] == [
                f"hosted_service: my name is {name.group(1)}",
                "hosted_service: this file is read from the service's working directory: "
                "the root of its measured copy",
            ]
            assert re.fullmatch(
                r"hosted_service: hello from a hosted service, sealed "
                r"\(sealed to policy 'self', \d+ bytes\)",
                lines[2],
            ), lines
            assert len(lines) == 3, lines
            await serve_and_stop(taonet, host, env, work, name.group(1))
        finally:
            stopped = await run([taonet, "host", "stop", *host], env=env, cwd=work)
        assert stopped.returncode == 0, stopped.stderr


async def serve_and_stop(
    taonet: str, host: list[str], env: dict[str, str], work: Path, name: str
) -> None:
    """Leave it serving on a port; ask it for a greeting; stop it by its pid."""
    port = free_port()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    # The program keeps the command's stdout and stderr: a pipe, and a file.
    with (work / "run.err").open("wb") as err:
        try:
            started = await trio.run_process(
                [taonet, "run", *host, "examples/hosted_service", "--listen", f"127.0.0.1:{port}"],
                env=env,
                cwd=work,
                stdout=out_w,
                stderr=err.fileno(),
                check=False,
            )
        finally:
            os.close(out_w)
    said = (work / "run.err").read_text()
    assert started.returncode == 0, said
    pid = re.search(r"\(pid (\d+)\)", said)
    assert pid is not None, said
    seen = b""
    async with trio.lowlevel.FdStream(out_r) as output:
        while b"listening on" not in seen:
            chunk = await output.receive_some(65536)
            assert chunk, seen
            seen += chunk
        assert f"hosted_service: listening on 127.0.0.1:{port}".encode() in seen
        asked = await run(["python3", "-c", CONNECT.replace("8470", str(port))], env=env)
        assert asked.returncode == 0, asked.stderr
        # Its name is the same measured tree's as the run before.
        assert asked.stdout == f"hello from a hosted service, {name}\n"
        stop = await run([taonet, "stop", *host, pid.group(1)], env=env, cwd=work)
        assert stop.returncode == 0, stop.stderr
        while await output.receive_some(65536):  # ends when the program has exited
            pass
