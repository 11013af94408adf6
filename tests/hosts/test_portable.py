"""``taonet.hosts`` is portable: channels, provisioning and ``parent()`` load nothing
Linux-specific (issue 9, item 1).

``import taonet.channel`` used to load the whole Linux host (supervisor, process
launch, admin socket), whose process module reads ``os.O_PATH`` at import: where
that is missing (macOS, the BSDs) channels and provisioning failed to import, and a
hosted program that only wanted ``parent()`` loaded 46 taonet modules. Each check
here runs in a fresh interpreter where ``os.O_PATH`` is removed, talks to a real host
over a real unix socket, and then lists which loaded modules come from
``taonet/hosts/linux/``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import trio

import taonet.hosts
import taonet.hosts.linux
from taonet.hosts import SoftHost, serve_tao_rpc

TIMEOUT = 60

#: Run in a fresh interpreter: what a program on a system without Linux's
#: ``os.O_PATH`` does. It imports the portable packages, finds
#: its host with ``parent()`` and asks its name, then prints that name and every
#: loaded module whose file is in ``taonet/hosts/linux/`` (or that has the Linux
#: host's old names, from before the split).
CHILD = """
import os, sys
del os.O_PATH
import taonet.channel, taonet.provision, taonet.hosts
from taonet.hosts import parent
import trio

async def main():
    async with parent() as tao:
        print(await tao.get_tao_name())

trio.run(main)
EXTRA
OLD = {"_linux", "_linux_config", "_process", "_admin", "_admin_client", "_admin_wire",
       "_environment", "_hosted", "_stacked"}
linux_dir = os.path.join(os.path.dirname(taonet.hosts.__file__), "linux")
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(linux_dir + os.sep) or name.startswith("taonet.hosts.linux") or (
        name.startswith("taonet.hosts.") and name.rpartition(".")[2] in OLD
    ):
        print("linux:", name)
"""


async def _run_against_a_host(host: SoftHost, tmp_path: Path, extra: str = "") -> list[str]:
    """Serve ``host`` on a unix socket and run :data:`CHILD` as its hosted program."""
    path = tmp_path / "tao.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    listener = trio.SocketListener(sock)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDPROXY_", "PYTHON"))}
    env |= {"CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "unix", "CLOUDPROXY_TAO_HOST_SPEC": str(path)}

    async def serve_one() -> None:
        stream = await listener.accept()
        await serve_tao_rpc(stream, host.tao_for())

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            result = await trio.run_process(
                [sys.executable, "-c", CHILD.replace("EXTRA", extra)],
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            nursery.cancel_scope.cancel()
    await listener.aclose()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode().splitlines()


async def test_channels_provisioning_and_parent_load_nothing_linux(  # type: ignore[no-untyped-def]
    make_host, tmp_path: Path
) -> None:
    host: SoftHost = make_host()
    lines = await _run_against_a_host(host, tmp_path)
    assert lines == [str(host.name)]  # the host answered, and no Linux module was loaded


async def test_the_check_notices_the_linux_host(  # type: ignore[no-untyped-def]
    make_host, tmp_path: Path
) -> None:
    # The check above can fail: touching a compatibility name loads the Linux host
    # (here without the Linux-only names gone, so that it imports at all), and the
    # listing shows it.
    host: SoftHost = make_host()
    extra = (
        "import importlib; os.O_PATH = 0x200000\n"
        "assert taonet.hosts.LinuxHost is importlib.import_module('taonet.hosts.linux').LinuxHost"
    )
    lines = await _run_against_a_host(host, tmp_path, extra)
    assert lines[0] == str(host.name)
    assert "linux: taonet.hosts.linux" in lines
    assert "linux: taonet.hosts.linux._process" in lines


#: Names taonet.hosts.linux gained after the move (so never in taonet.hosts).
NEW_IN_LINUX = frozenset(
    {
        "AmbiguousSelectorError",
        "ProgramNotFoundError",
        "TreeLimits",
        "default_interpreters",
        "host_config_at",
        "program_file",
        "program_rule_on",
        "program_subprin_on",
        "select_programs",
    }
)


def test_the_linux_names_are_still_reachable_from_taonet_hosts() -> None:
    for name in taonet.hosts.linux.__all__:
        # The host directory's file names and NEW_IN_LINUX are new, not moved.
        if not name.isupper() and name not in NEW_IN_LINUX:
            assert getattr(taonet.hosts, name) is getattr(taonet.hosts.linux, name), name
            assert name in dir(taonet.hosts)
            assert name not in taonet.hosts.__all__  # ``import *`` stays portable
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        taonet.hosts.NoSuchName  # noqa: B018


def test_the_host_directory_names_are_public() -> None:
    assert taonet.hosts.linux.ADMIN_SOCKET == "admin.sock"
    assert taonet.hosts.linux.LOCK_FILE == "host.lock"
    assert taonet.hosts.linux.LOG_FILE == "host.log"
    assert taonet.hosts.linux.CONFIG_FILE == "host.toml"
