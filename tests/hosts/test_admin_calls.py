"""The admin protocol over its real unix socket: an error answer ends its own call
only, and an answer to another call breaks the client."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import AuthorizationError, CodecError, HostError, ProtocolError
from taonet.hosts.linux import AdminClient, Caller
from taonet.hosts.linux._admin_wire import ADMIN_MAX_RESPONSE
from taonet.wire import encode_frame, message_class, serialize
from tests.hosts.test_admin import TIMEOUT, Backend, answer, fake_host, serving


class _Refusing(Backend):
    """Refuses to stop anything for uid 0 (to see one kind of error come back)."""

    async def stop_programs(self, selector: str, caller: Caller, *, kill: bool = False) -> Any:
        if not kill:
            raise AuthorizationError(f"uid {caller.uid} may not stop {selector}")
        return await super().stop_programs(selector, caller, kill=kill)


async def test_refused_calls_leave_the_admin_connection_usable(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(_Refusing(), tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            info = await admin.start("/bin/x")
            # Each refusal raises the host's class with its message, for that call.
            with pytest.raises(AuthorizationError, match=rf"^uid \d+ may not stop {info.pid}$"):
                await admin.stop(str(info.pid))
            with pytest.raises(HostError, match=r"^no program matches 4242$"):
                await admin.kill("4242")
            with pytest.raises(CodecError):
                await admin.kill("not(a name")
            # The same connection goes on.
            assert not admin.closed
            assert await admin.list() == [info]


async def test_a_replayed_answer_breaks_the_admin_client(tmp_path: Path) -> None:
    first: list[bytes] = []

    def refuse_once(header: Any, body: Any) -> bytes:
        refusal = answer(error="HostError: no program matches 9")(header, body)
        assert refusal is not None
        first.append(refusal)
        return refusal

    def replay(header: Any, body: Any) -> bytes:
        return first[0]  # the answer to call 1, again, for call 2

    with trio.fail_after(TIMEOUT):
        async with fake_host(tmp_path, [refuse_once, replay]) as admin:
            with pytest.raises(HostError, match=r"^no program matches 9$"):
                await admin.kill("9")
            assert not admin.closed
            with pytest.raises(
                ProtocolError,
                match=r"answered call 2 \(LinuxHost\.KillHostedProgram\) as call 1 .*nobody made",
            ):
                await admin.kill("9")
            assert admin.closed
            with pytest.raises(HostError):
                await admin.list()


async def test_a_wrong_answer_is_refused_on_its_header_alone(tmp_path: Path) -> None:
    # Another call's header, announcing a large body that never comes: the client does
    # not wait for the body to know that the answer is not its own.
    def wrong(header: Any, body: Any) -> bytes:
        other = message_class("RPCHeader")(op=header.op, seq=header.seq + 6)
        return encode_frame(serialize(other)) + struct.pack(">I", ADMIN_MAX_RESPONSE)

    with trio.fail_after(TIMEOUT):
        async with fake_host(tmp_path, [wrong]) as admin:
            with pytest.raises(ProtocolError, match="as call 7"):
                await admin.list()
            assert admin.closed
