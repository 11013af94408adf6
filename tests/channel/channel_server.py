"""A real Tao channel server in its own process, for tests and measurements that need one.

Run as ``python -m tests.channel.channel_server`` (``flood.py`` starts it). It reads one
line of JSON on stdin: the hex of the policy certificate, the server's PKCS#8 DER key
and program certificate (through the pipe, never a file), ``nofile`` (a soft
``RLIMIT_NOFILE`` to set first, or null) and ``options`` (keyword arguments for
:func:`serve_channels`). It logs as the taonet CLI and services do (structlog
key=value lines on stderr, stdlib logging left alone), serves an echo handler on
127.0.0.1, prints ``PORT <n>`` on stdout, and exits when its stdin closes.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

import trio

from taonet import configure_logging
from taonet.channel import ChannelIdentity, TaoStream, serve_channels
from taonet.crypto import Signer


async def echo(stream: TaoStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def serve(identity: ChannelIdentity, options: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_channels(
                echo, 0, identity, task_status=task_status, **options
            )
        )
        print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()


def main() -> None:
    given = json.loads(sys.stdin.buffer.readline())
    if given.get("nofile") is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(given["nofile"]), hard))
    configure_logging(level="info")
    identity = ChannelIdentity(
        bytes.fromhex(given["policy"]),
        signer=Signer.from_pkcs8_der(bytes.fromhex(given["key"])),
        certificate=bytes.fromhex(given["cert"]),
    )
    trio.run(serve, identity, given.get("options", {}))


if __name__ == "__main__":
    main()
