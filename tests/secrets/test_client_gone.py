"""A client that goes away without closing is an ordinary end of its channel.

The read loop of a connection runs in a nursery, which wraps what it raises in an
exception group: the server used to miss the broken stream inside it and log
``channel_handler_failed`` with a traceback at error level for every client that
dropped its connection (a program killed, a network cut).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import trio
from structlog.testing import capture_logs
from structlog.typing import EventDict

from taonet.channel import open_channel
from taonet.secrets import CreateRequest, encode_request
from taonet.wire import Envelope, Role
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create")]


async def test_a_client_cut_off_mid_request_is_logged_as_gone(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            owner = await world.identity("owner")
            gone = trio.Event()

            def note(_logger: object, _method: str, event: EventDict) -> EventDict:
                if event["event"] == "client_broken":
                    gone.set()
                return event

            with capture_logs(processors=[note]) as logs:
                stream = await open_channel(*world.address, owner)
                method, body = encode_request(CreateRequest("/app/k", b"v" * 4096))
                envelope = Envelope(Role.CLIENT, body_limit=1 << 20)
                frames = b"".join(envelope.request(method, 1, body))
                await stream.send_all(frames[: len(frames) // 2])  # then the client dies
                tcp = stream.tls_stream.transport
                assert isinstance(tcp, trio.SocketStream)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await trio.aclose_forcefully(tcp)  # an RST, not a TLS close_notify
                with trio.fail_after(10):
                    await gone.wait()
            events = [e["event"] for e in logs]
            assert "channel_handler_failed" not in events
            assert "client_broken" in events
