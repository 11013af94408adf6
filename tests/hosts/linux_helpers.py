"""Helpers for Linux host tests: a probe program, a running host, program output."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

import taonet
from taonet import auth
from taonet.crypto import KdfParams
from taonet.domain import program_subprin
from taonet.hosts.linux import AdminClient, LinuxHost, LinuxHostConfig
from tests.conftest import PASSWORD

#: What the test interpreter needs inside a bwrap sandbox, whose /tmp is empty (a
#: checkout and its virtual environment may live under /tmp).
RUNTIME_PATHS = (sys.prefix, str(Path(taonet.__file__).resolve().parents[1]))
PROBE_SOURCE = (Path(__file__).parent / "probe_program.py").read_text()
TIMEOUT = 60


def write_probe(directory: Path, name: str = "probe", *, extra: str = "") -> Path:
    """The probe program as an executable script for this interpreter."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{PROBE_SOURCE}\n{extra}")
    path.chmod(0o755)
    return path


def digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def child_name(host: LinuxHost, path: Path, program_id: int = 0) -> auth.Prin:
    return host.name.extend(program_subprin(digest(path), program_id=program_id))


def init_root(directory: Path, *, domain: Any = None, **options: Any) -> LinuxHostConfig:
    config = LinuxHostConfig(
        kind="root",
        domain=str(domain.path) if domain is not None else None,
        guard="domain" if domain is not None else "Liberal",
        grace_period=options.pop("grace_period", 1.0),
        **options,
    )
    LinuxHost.init(
        directory,
        config,
        password=PASSWORD,
        kdf=KdfParams.for_tests(),
        policy_signer=domain.unlock(PASSWORD) if domain is not None else None,
    )
    return config


async def open_root(nursery: trio.Nursery, directory: Path, **options: Any) -> LinuxHost:
    host = await LinuxHost.open(directory, password=PASSWORD, **options)
    await nursery.start(host.run)
    return host


async def run_probe(
    host: LinuxHost | Path,
    program: Path,
    steps: Sequence[str],
    *,
    cwd: Path | None = None,
    stdin: int | None = None,
) -> tuple[int | None, list[dict[str, Any]]]:
    """Start ``program`` with ``steps`` on ``host`` (or the host at that admin socket),
    wait for it; return (exit status, JSON lines)."""
    status, output = await run_captured(
        host,
        program,
        steps,
        cwd=str(cwd or program.parent),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdin=stdin,
    )
    return status, parse_lines(output)


async def run_captured(
    host: LinuxHost | Path, program: Path, args: Sequence[str], **options: Any
) -> tuple[int | None, bytes]:
    """Start ``program`` with ``args`` (and AdminClient.start's ``options``) on ``host``
    (or the host at that admin socket), its stdout to a pipe; wait for it; return (exit
    status, all it wrote)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    socket = host if isinstance(host, Path) else host.socket_path
    async with AdminClient.connect(socket) as admin:
        try:
            info = await admin.start(str(program), list(args), stdout=write_fd, **options)
        finally:
            os.close(write_fd)
        output = await read_all(read_fd)
        done = await admin.wait(str(info.pid))
    return done.exit_status, output


async def read_all(fd: int) -> bytes:
    data = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def parse_lines(output: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]


FUZZ_SOURCE = (Path(__file__).parent / "fuzz_program.py").read_text()


def write_fuzzer(directory: Path, name: str = "fuzzer") -> Path:
    """The RPC fuzzer program as an executable script for this interpreter."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{FUZZ_SOURCE}")
    path.chmod(0o755)
    return path
