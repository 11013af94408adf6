"""``taonet host start``: a Linux host in this process, or started in the background.

A start refuses if a host already answers on the admin socket, and a running host
holds ``host.lock`` in its directory (see :meth:`taonet.hosts.linux.LinuxHost.run`), so two
starts never both serve it. In the
background the host is an isolated interpreter started in ``/`` with a trimmed
environment (see :mod:`taonet.cli._reexec`), and the start returns once that very
process reports, over a pipe it inherits (``--ready-fd``), that it serves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from taonet import ConfigError, HostError
from taonet.cli._failures import describe, leaves
from taonet.cli._password import get_password
from taonet.cli._reexec import child_environment, taonet_argv
from taonet.hosts.linux import ADMIN_SOCKET, LOG_FILE, LinuxHostConfig

__all__ = [
    "START_TIMEOUT",
    "ready_fd",
    "refuse_if_running",
    "start_background",
    "start_foreground",
]

#: How long ``taonet host start`` waits for a background host to say it serves.
START_TIMEOUT: Final = 60.0
#: How long a start waits for a host already on the socket to say its name.
_PROBE_TIMEOUT: Final = 5.0
#: The most a background host may write to say it is ready (its name and a newline).
_READY_LIMIT: Final = 64 * 1024


def refuse_if_running(directory: Path) -> None:
    """HostError if something (a host, surely) answers on the directory's admin socket."""
    import socket

    import trio

    from taonet.hosts.linux import AdminClient

    path = directory / ADMIN_SOCKET

    async def probe() -> str | None:
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                await sock.connect(os.fspath(path))
            except (FileNotFoundError, ConnectionRefusedError):
                return None  # nothing there, or a stale socket the host will replace
            except OSError as exc:
                raise HostError(
                    f"cannot tell whether a host is running at {path}: {exc.strerror or exc}"
                ) from None
        with contextlib.suppress(HostError), trio.move_on_after(_PROBE_TIMEOUT):
            async with AdminClient.connect(path) as admin:
                return str(await admin.host_name())
        return "it does not say its name"

    name = trio.run(probe)
    if name is not None:
        raise HostError(
            f"a Linux host is already running at {path} ({name}); "
            "stop it first with 'taonet host stop'"
        )


def ready_fd(value: str) -> int:
    """``--ready-fd``: an inherited descriptor open for writing."""
    try:
        fd = int(value)
        if fd < 3:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a descriptor number over 2: {value!r}") from None
    return fd


def _claim_ready_fd(fd: int | None) -> None:
    """Check ``--ready-fd`` before any slow work, and keep it from hosted programs."""
    if fd is None:
        return
    try:
        os.fstat(fd)
        os.set_inheritable(fd, False)
    except OSError as exc:
        raise ConfigError(f"--ready-fd {fd}: {exc.strerror or exc}") from None


#: What a child that did not start writes on ``--ready-fd`` before its reason (a name
#: never starts so: a principal's text starts with its type).
_FAILED: Final = "!"


class _ReadyReport:
    """Tells whoever started this host (``--ready-fd``), once: that it serves and as
    whom, or why it did not start. The reason goes over the pipe, not only to the
    log: two starts at once share the log, and the other's last line is not ours."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def ready(self, name: str) -> None:
        self._send(name)

    def failed(self, why: str) -> None:
        self._send(_FAILED + " ".join(why.split())[:500])

    def _send(self, text: str) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, text.encode() + b"\n")
        except OSError as exc:  # the starter is gone: it was only a courtesy
            print(f"taonet: cannot report readiness: {exc.strerror or exc}", file=sys.stderr)
        finally:
            os.close(fd)


def start_foreground(args: argparse.Namespace, directory: Path, config: LinuxHostConfig) -> int:
    """``host start --foreground``: serve in this process (the host holds ``host.lock``)."""
    from taonet import configure_logging

    configure_logging()
    report_fd: int | None = args.ready_fd
    _claim_ready_fd(report_fd)
    report = _ReadyReport(report_fd)
    try:
        refuse_if_running(directory)
        soft_root = config.kind == "root" and config.root_tao == "soft"
        password = get_password(args.password_file, prompt="Host password") if soft_root else None
        # LinuxHost.run holds the directory's host.lock: of two starts that both got
        # past the probe above, only one serves.
        # The host logs linux_host_stopped itself; linux_host_stopping said why.
        stopped_by = _run_host(directory, config, password, report)
    except Exception as exc:  # no-op once it said it serves
        report.failed("; ".join(dict.fromkeys(describe(leaf) for leaf in leaves(exc))))
        raise
    print(f"Linux host stopped ({stopped_by or 'shut down'})", flush=True)
    return 0


def _run_host(
    directory: Path, config: LinuxHostConfig, password: bytes | None, report: _ReadyReport
) -> str | None:
    """Open the host and serve until SIGINT or SIGTERM, then stop it in order; the
    signal's name, or None if it stopped otherwise (``taonet host stop``)."""
    stopped_by: list[str] = []
    import structlog
    import trio

    from taonet.hosts import parent
    from taonet.hosts.linux import LinuxHost

    log = structlog.get_logger(__name__)

    async def main() -> None:
        if config.kind == "root":
            # A root host on a TPM opens its TPM host itself, and needs no password.
            host = await LinuxHost.open(directory, password=password)
            await _serve(host)
        else:
            async with parent() as tao:
                host = await LinuxHost.open(directory, parent=tao)
                await _serve(host)

    async def _serve(host: Any) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def run_host(task_status: Any) -> None:
                    await host.run(task_status=task_status)
                    nursery.cancel_scope.cancel()

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        stopped_by.append(signal.Signals(signum).name)
                        log.info("linux_host_stopping", signal=stopped_by[0])
                        await host.stop()
                        return

                nursery.start_soon(stop_on_signal)
                await nursery.start(run_host)
                log.info(
                    "linux_host_listening",
                    host=str(directory),
                    kind=config.kind,
                    listen=str(host.socket_path),
                    name=str(host.name),
                )
                print(f"Linux host {host.name} serving {host.socket_path}", flush=True)
                report.ready(str(host.name))

    trio.run(main)
    return stopped_by[0] if stopped_by else None


def start_background(directory: Path, password: bytes) -> int:
    """Start ``host start --foreground`` as a daemon; return once it says it serves.

    The child is an isolated interpreter (see :mod:`taonet.cli._reexec`) started in
    ``/`` with a trimmed environment, so neither the caller's directory nor their
    ``PYTHON*`` variables choose the code that reads the password. It reports
    readiness itself, over a pipe it inherits (``--ready-fd``): a host that was
    already serving cannot be mistaken for this one.
    """
    import trio

    log_path = directory / LOG_FILE
    read_fd, write_fd = os.pipe()
    try:
        with open(log_path, "ab") as log:
            log_start = log.tell()
            proc = subprocess.Popen(
                taonet_argv(
                    "host",
                    "start",
                    "--foreground",
                    "--host",
                    str(directory),
                    "--password-file",
                    "-",
                    "--ready-fd",
                    str(write_fd),
                ),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                cwd="/",
                env=child_environment(),
                pass_fds=(write_fd,),
                start_new_session=True,
            )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            proc.stdin.write(password + b"\n")  # if it died at once, the pipe below says so
        name = trio.run(_wait_ready, read_fd)
    except BaseException:  # interrupted while it starts: do not leave it behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    if not name or name.startswith(_FAILED):
        if proc.poll() is None:
            proc.kill()
        status = proc.wait()
        if name is None:
            why = f"it did not say that it serves within {START_TIMEOUT:g} s"
        elif name:  # the child's own reason
            why = name[len(_FAILED) :].removeprefix("taonet: error: ")
        else:
            why = _last_log_line(log_path, log_start) or f"it exited with status {status}"
        raise HostError(f"the host did not start: {why} (log: {log_path})")
    print(f"Linux host {name} started (pid {proc.pid}); log in {log_path}")
    return 0


async def _wait_ready(read_fd: int) -> str | None:
    """The name the child writes on ``read_fd`` once it serves: "" if it closes the
    pipe (or writes nonsense) without saying it, None if it says nothing in time."""
    import trio

    received = b""
    async with trio.lowlevel.FdStream(read_fd) as stream:
        with trio.move_on_after(START_TIMEOUT):
            while b"\n" not in received and len(received) < _READY_LIMIT:
                chunk = await stream.receive_some(_READY_LIMIT)
                if not chunk:
                    return ""
                received += chunk
            line, newline, _ = received.partition(b"\n")
            text = line.decode(errors="replace")
            return "".join(c if c.isprintable() else "?" for c in text) if newline else ""
    return None


def _last_log_line(log_path: Path, start: int) -> str:
    """The last line the child wrote to its log (bounded, printable), or ''."""
    try:
        with open(log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - 4096))
            tail = f.read(4096)
    except OSError:
        return ""
    lines = [line.strip() for line in tail.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1].removeprefix("taonet: error: ")
    return "".join(c if c.isprintable() else "?" for c in last)[:500]
