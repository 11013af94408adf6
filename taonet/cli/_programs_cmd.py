"""``taonet list|stop|kill``: the programs on a Linux host, named as people name them.

``taonet list`` prints a header and one line per program: its short id (the first
12 of the 32 hex digits the host gave it), pid, user, start time (UTC) and file;
``-o json`` adds the full id, principal, program hash and ISO start time.

``taonet stop|kill SELECTOR`` takes a pid, a file name or path, an id, or, when nothing
matches exactly, a unique prefix of an id (at least 4 digits); the explicit forms
``id:``, ``pid:`` and ``file:``; or a full principal (which names every instance of that
program); see :func:`taonet.hosts.linux.select_programs`. The selector is resolved here
against the host's list, so one that names nothing is *not found* (exit 3) and one that
names several is refused (exit 2) with the candidates listed; each chosen program is
then signalled by its full id, so a program started meanwhile is never hit by mistake.
"""

from __future__ import annotations

import argparse
import pwd
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taonet.cli._failures import AmbiguousError, NotFoundError, is_missing
from taonet.cli._output import emit, iso_time
from taonet.hosts.linux import (
    ADMIN_SOCKET,
    AmbiguousSelectorError,
    ProgramInfo,
    ProgramNotFoundError,
    program_file,
    select_programs,
)

#: Digits of a program's id that ``taonet list`` shows.
SHORT_ID = 12

__all__ = ["admin_call", "list_programs", "program_document", "signal_programs"]

#: The columns of ``taonet list``.
_HEADER = ("ID", "PID", "USER", "STARTED", "FILE")


def admin_call(directory: Path, action: Any) -> Any:
    """Run ``action(admin)`` on the host's admin socket.

    No such directory is *not found*; no host answering there (no socket, or nobody
    listening) leaves AdminClient as a HostError caused by that, which the CLI
    reports as *unavailable* (see :func:`taonet.cli._failures.exit_status`).
    """
    import trio

    from taonet.hosts.linux import AdminClient

    if is_missing(directory):
        raise NotFoundError(f"no Linux host directory at {directory}")

    async def main() -> Any:
        async with AdminClient.connect(directory / ADMIN_SOCKET) as admin:
            return await action(admin)

    return trio.run(main)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _short(info: ProgramInfo) -> str:
    return info.instance_id[:SHORT_ID] if info.instance_id else "-"


def _started(info: ProgramInfo) -> str:
    shown = iso_time(info.started_ns)
    return "-" if shown is None else shown[:19].replace("T", " ")


def program_document(info: ProgramInfo) -> dict[str, Any]:
    """One program as ``-o json`` shows it."""
    return {
        "id": info.instance_id or None,
        "short_id": info.instance_id[:SHORT_ID] or None,
        "pid": info.pid,
        "uid": info.uid,
        "user": _user(info.uid),
        "gid": info.gid,
        "file": program_file(info.path),
        "path": info.path,
        "principal": str(info.name),
        "program_sha256": info.program_hash.hex(),
        "program_number": info.program_id,
        "started": iso_time(info.started_ns),
        "started_ns": info.started_ns,
        "exit_status": info.exit_status,
    }


def _describe(info: ProgramInfo) -> str:
    return f"id {_short(info)} pid {info.pid} {program_file(info.path)!r}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def list_programs(args: argparse.Namespace, directory: Path) -> int:
    async def programs(admin: Any) -> Any:
        return await admin.list()

    found: Sequence[ProgramInfo] = admin_call(directory, programs)
    ordered = sorted(found, key=lambda i: (i.started_ns or 0, i.pid))

    def text() -> None:
        if not ordered:
            print("no programs running")
            return
        rows = [_HEADER] + [
            (_short(i), str(i.pid), _user(i.uid), _started(i), program_file(i.path))
            for i in ordered
        ]
        for line in _table(rows):
            print(line)

    emit(args, {"host": str(directory), "programs": [program_document(i) for i in ordered]}, text)
    return 0


def choose(selector: str, programs: Sequence[ProgramInfo]) -> list[ProgramInfo]:
    """The programs ``selector`` names; NotFoundError or AmbiguousError otherwise."""
    try:
        return select_programs(
            selector,
            programs,
            pid=lambda i: i.pid,
            program_id=lambda i: i.instance_id,
            path=lambda i: i.path,
            names=lambda i: (i.name,),
            describe=_describe,
        )
    except ProgramNotFoundError as exc:
        raise NotFoundError(str(exc)) from None
    except AmbiguousSelectorError as exc:
        raise AmbiguousError(str(exc)) from None


def signal_programs(args: argparse.Namespace, directory: Path) -> int:
    verb = "killed" if args.kill else "stopped"

    async def act(admin: Any) -> list[ProgramInfo]:
        chosen = choose(args.selector, await admin.list())
        done: list[ProgramInfo] = []
        for info in chosen:
            # By its full id: a pid may be taken by another program by now.
            exact = f"id:{info.instance_id}" if info.instance_id else str(info.pid)
            signal = admin.kill if args.kill else admin.stop
            done.extend(await signal(exact))
        return done

    done: list[ProgramInfo] = admin_call(directory, act)

    def text() -> None:
        for info in done:
            print(f"{verb} {_short(info)} {program_file(info.path)} (pid {info.pid})")

    emit(args, {verb: [program_document(info) for info in done]}, text)
    return 0
