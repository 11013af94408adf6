"""Watch what building a ChannelIdentity, and then using it, writes to the temp directory.

Run as ``python -m tests.channel.identity_probe`` with ``TMPDIR`` pointing at a fresh,
empty directory; ``test_identity.py`` does. It reads, as one JSON object on stdin, the
hex of a policy certificate, a PKCS#8 DER key and its program certificate (the key
arrives through a pipe, never through a file), then:

1. ``build``: builds a :class:`ChannelIdentity` from them and both of its server
   contexts;
2. ``handshakes``: serves Tao channels with it on 127.0.0.1 and opens a few channels
   to itself.

A Python audit hook (``sys.addaudithook``: the interpreter's own observation point, no
patching) sees every file opened and every directory tree or file removed under
``TMPDIR``, and reads each file just before it is removed. The probe prints one JSON
object: for each phase, the paths opened for writing there and the hex of every file's content as
it was just before removal, plus what was left in ``TMPDIR`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

from taonet.channel import ChannelIdentity, TaoStream, open_channel, serve_channels
from taonet.crypto import Signer

HANDSHAKES = 3

ROOT = os.path.realpath(tempfile.gettempdir())
phase = "start"
report: dict[str, dict[str, list[str]]] = {}
_busy = False


def _under_root(path: Any) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str | os.PathLike):
        return None
    full = os.path.realpath(os.fspath(path))
    return full if full.startswith(ROOT + os.sep) else None


def _keep(full: str) -> None:
    """Record the content of a file, or of every file under a directory."""
    paths = [full] if os.path.isfile(full) else []
    for top, _, names in os.walk(full):
        paths += [os.path.join(top, name) for name in names]
    for path in paths:
        with open(path, "rb") as f:
            report[phase]["contents"].append(f.read().hex())


def _hook(event: str, args: tuple[Any, ...]) -> None:
    global _busy
    if _busy or event not in {"open", "os.remove", "os.unlink", "shutil.rmtree", "os.rename"}:
        return
    full = _under_root(args[0]) if args else None
    if full is None:
        return
    _busy = True
    try:
        entry = report.setdefault(phase, {"opened": [], "contents": []})
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):  # files written, not read
                entry["opened"].append(full)
        else:
            _keep(full)
    finally:
        _busy = False


async def handshakes(identity: ChannelIdentity) -> None:
    async def echo(stream: TaoStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_channels, echo, 0, identity)
            port = listeners[0].socket.getsockname()[1]
            for _ in range(HANDSHAKES):
                stream = await open_channel("127.0.0.1", port, identity)
                await stream.send_all(b"x")
                assert await stream.receive_some() == b"x"
                await stream.aclose()
            nursery.cancel_scope.cancel()


def main() -> None:
    global phase
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    given = json.loads(sys.stdin.read())
    policy, key, cert = (bytes.fromhex(given[k]) for k in ("policy", "key", "cert"))
    sys.addaudithook(_hook)
    phase = "build"
    report[phase] = {"opened": [], "contents": []}
    identity = ChannelIdentity(policy, signer=Signer.from_pkcs8_der(key), certificate=cert)
    identity.server_context()
    identity.server_context(allow_anonymous=True)
    phase = "handshakes"
    report[phase] = {"opened": [], "contents": []}
    trio.run(handshakes, identity)
    left = [str(p) for p in Path(ROOT).rglob("*")]
    print(json.dumps({"phases": report, "left": left}))


if __name__ == "__main__":
    main()
