"""Issue 8, item 11: what users (and scripts) run into is one line, never a traceback.

Each test runs the real command in a real process: a domain service on an address it
cannot listen on, or stopped by a real signal; a demo directory under /proc; output
into a pipe whose reader is gone; Ctrl-D and Ctrl-C at a password prompt on a real
pseudo-terminal; no standard input at all; and program "files" that are a device, a
FIFO nobody writes, a directory or a socket (``/dev/zero`` used to hang for ever).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.cli.cli_helpers import (
    COMMAND_TIMEOUT,
    clean_env,
    isolated,
    make_domain,
    ok,
    one_line_error,
    run,
)

VECTOR_TEXT = "key([74657374206b6579]) speaksfor key([746573742074616f206b6579])"


async def reap(proc: trio.Process) -> None:
    """Kill ``proc`` if a failed test left it running, and wait for it."""
    if proc.returncode is None:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


@pytest.fixture
async def domain(tmp_path: Path) -> Path:
    return await make_domain(tmp_path)


def service_argv(domain: Path, listen: str) -> list[str]:
    return isolated(
        "domain-service",
        "--domain",
        str(domain),
        "--listen",
        listen,
        "--password-file",
        str(domain.parent / "pw"),
    )


# -- domain-service -------------------------------------------------------------------


async def test_domain_service_on_a_port_in_use(domain: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run(service_argv(domain, f"127.0.0.1:{port}"))
    one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")


async def test_domain_service_on_an_address_not_of_this_machine(domain: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no machine has it.
    result = await run(service_argv(domain, "192.0.2.1:0"))
    one_line_error(result, "cannot listen on 192.0.2.1:0")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_domain_service_stops_in_order_on_a_signal(
    domain: Path, signum: signal.Signals
) -> None:
    with trio.fail_after(COMMAND_TIMEOUT):
        proc = await trio.lowlevel.open_process(
            service_argv(domain, "127.0.0.1:0"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = b""
        err = b""
        try:
            while b"listening on" not in out:
                chunk = await proc.stdout.receive_some()
                assert chunk, (out, await proc.stderr.receive_some())
                out += chunk
            proc.send_signal(signum)

            async def drain_stderr() -> None:
                nonlocal err
                assert proc.stderr is not None
                while chunk := await proc.stderr.receive_some():
                    err += chunk

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain_stderr)
                while chunk := await proc.stdout.receive_some():
                    out += chunk
            status = await proc.wait()
        finally:
            await reap(proc)
    assert (status, err) == (0, b""), (status, out, err)
    assert out.decode().endswith(f"domain service stopped ({signum.name})\n"), out


# -- demo, general OS errors ----------------------------------------------------------


@pytest.mark.parametrize("hosted", [False, True])
@pytest.mark.parametrize("where", ["/proc/taonet-demo", "/proc/self/taonet-demo"])
async def test_demo_in_a_directory_that_cannot_be(where: str, hosted: bool) -> None:
    result = await run(isolated("demo", "--dir", where, *(["--hosted"] if hosted else [])))
    one_line_error(result, f"cannot use {where} as the demo directory")


async def test_an_os_error_from_any_command_is_one_line(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    result = await run(
        isolated("domain", "init", "/proc/taonet-domain", "--password-file", str(pw))
    )
    one_line_error(result, "/proc/taonet-domain", returncode=3)


# -- output into a closed pipe --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("auth", "parse", VECTOR_TEXT), ("domain", "principal", "--program", sys.executable)],
    ids=["auth-parse", "domain-principal"],
)
async def test_output_into_a_pipe_nobody_reads_is_quiet(
    domain: Path, args: tuple[str, ...]
) -> None:
    """``taonet ... | head -1`` with head gone before taonet writes: no traceback, no
    "Exception ignored" at exit, status 141 (what a shell shows for SIGPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = await run(isolated(*args), env=clean_env(TAO_DOMAIN=str(domain)), stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, ""), result


# -- passwords ------------------------------------------------------------------------

#: Make the pty on fd 0 this new session's controlling terminal, then become the command.
_ON_A_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


async def at_the_prompt(argv: list[str], keys: bytes) -> tuple[int, str]:
    """Run ``argv`` on a new pseudo-terminal, type ``keys`` at its password prompt;
    its exit status and everything it wrote to the terminal."""
    master, slave = os.openpty()
    with trio.fail_after(COMMAND_TIMEOUT):
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", _ON_A_TERMINAL, *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=clean_env(),
                start_new_session=True,
            )
        finally:
            os.close(slave)
        seen = b""
        try:
            async with trio.lowlevel.FdStream(master) as terminal:
                try:
                    while b"password: " not in seen.lower():
                        chunk = await terminal.receive_some()
                        assert chunk, seen
                        seen += chunk
                    await terminal.send_all(keys)
                    while chunk := await terminal.receive_some():
                        seen += chunk
                except trio.BrokenResourceError:
                    pass  # EIO: the command closed the terminal's last other end
            status = await proc.wait()
        finally:
            await reap(proc)
    return status, seen.decode(errors="replace").replace("\r\n", "\n")


async def test_ctrl_d_at_the_password_prompt(tmp_path: Path) -> None:
    status, text = await at_the_prompt(isolated("domain", "init", str(tmp_path / "d")), b"\x04")
    assert status == 2, text
    assert "Traceback" not in text, text
    after_prompt = text.split("password: ", 1)[1].strip().splitlines()
    assert after_prompt == ["taonet: error: no password given (end of input at the prompt)"]
    assert not (tmp_path / "d").exists()


async def test_ctrl_c_at_the_password_prompt(tmp_path: Path) -> None:
    status, text = await at_the_prompt(isolated("domain", "init", str(tmp_path / "d")), b"\x03")
    assert status == 130, text
    assert "Traceback" not in text, text
    assert text.split("password: ", 1)[1].strip().splitlines() == ["taonet: interrupted"]


#: Close standard input entirely (``<&-``), then become the command.
_WITHOUT_STDIN = "import os, sys; os.close(0); os.execv(sys.argv[1], sys.argv[1:])"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [((), "no terminal"), (("--password-file", "-"), "no standard input")],
)
async def test_no_standard_input_at_all(
    tmp_path: Path, extra: tuple[str, ...], expected: str
) -> None:
    argv = isolated("domain", "init", str(tmp_path / "d"), *extra)
    result = await run([sys.executable, "-c", _WITHOUT_STDIN, *argv])
    one_line_error(result, expected, returncode=2)


# -- program files that are not files --------------------------------------------------


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_socket(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    return path


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda tmp: Path("/dev/zero"), "a character device"),
        (lambda tmp: Path("/dev/null"), "a character device"),
        (lambda tmp: make_fifo(tmp / "fifo"), "a FIFO"),
        (lambda tmp: make_socket(tmp / "sock"), "a socket"),
    ],
    ids=["dev-zero", "dev-null", "fifo-nobody-writes", "socket"],
)  # a directory is a program (tests/hosts/test_naming.py)
async def test_add_program_refuses_what_is_not_a_regular_file(
    domain: Path, tmp_path: Path, make: object, kind: str
) -> None:
    program = make(tmp_path)  # type: ignore[operator]
    env = clean_env(TAO_DOMAIN=str(domain))
    rules_before = ok(await run(isolated("domain", "policy", "--show"), env=env))
    pw = str(domain.parent / "pw")
    result = await run(
        isolated("domain", "policy", "--add-program", str(program), "--password-file", pw),
        env=env,
    )
    one_line_error(result, f"cannot measure {program}: it is {kind}, not a regular file")
    assert ok(await run(isolated("domain", "policy", "--show"), env=env)) == rules_before
    result = await run(isolated("domain", "principal", "--program", str(program)), env=env)
    one_line_error(result, "not a regular file")


@pytest.mark.parametrize("name", ["domain.sig", "domain.toml", "acls"])
async def test_a_domain_file_replaced_by_a_fifo_is_refused_at_once(domain: Path, name: str) -> None:
    """Whoever can write the domain directory puts a FIFO nobody writes in place of a
    file the domain reads: loading it is refused in one line, it does not hang."""
    target = domain / name
    target.unlink()
    make_fifo(target)
    env = clean_env(TAO_DOMAIN=str(domain))
    result = await run(isolated("domain", "policy", "--show"), env=env)
    one_line_error(result, f"{target}: it is a FIFO, not a regular file")


# -- logging settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"), [("TAONET_LOG", "loud"), ("TAONET_LOG_FORMAT", "xml")]
)
async def test_an_unknown_log_setting_is_one_line(
    domain: Path, tmp_path: Path, variable: str, value: str
) -> None:
    """A misspelt ``TAONET_LOG`` used to be taken silently as "info"."""
    env = clean_env(**{variable: value})
    for argv in (
        isolated("demo", "--dir", str(tmp_path / "demo")),
        service_argv(domain, "127.0.0.1:0"),
    ):
        result = await run(argv, env=env)
        one_line_error(result, variable, repr(value))
        assert result.stdout == ""
