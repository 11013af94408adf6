"""The raw TPM command layer: TCTI strings, response parsing, a TPM that misbehaves.

The misbehaving TPM is a real TCP server on 127.0.0.1 that answers with bytes a test
chooses, so the transport's bounds are tried on a real socket.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import struct
from collections.abc import Awaitable, Callable

import hypothesis
import pytest
import trio
from hypothesis import strategies as st

from taonet import ConfigError, HostError
from tests.tpm2_fixtures import INSTALL_LINE, in_ci

if importlib.util.find_spec("tpm2_pytss") is None and not in_ci():  # CI must run these
    pytest.skip(INSTALL_LINE, allow_module_level=True)

from taonet.hosts.tpm2 import _wire
from taonet.hosts.tpm2._transport import (
    ConnectionLost,
    Tcti,
    Transport,
    parse_tcti,
)


def test_parse_tcti() -> None:
    assert parse_tcti("swtpm:port=2321") == Tcti("swtpm", host="127.0.0.1", port=2321)
    assert parse_tcti("swtpm:host=localhost,port=9") == Tcti("swtpm", host="localhost", port=9)
    assert parse_tcti("device:/dev/tpmrm0") == Tcti("device", path="/dev/tpmrm0")
    for bad in (
        "",
        "mssim:port=1",
        "swtpm:port=x",
        "device:relative",
        "swtpm:host=a",
        "swtpm:host=tpm.example,port=9",
    ):
        with pytest.raises(ConfigError):
            parse_tcti(bad)


def _response(rc: int = 0, body: bytes = b"", tag: int = _wire.TPM_ST_NO_SESSIONS) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), rc) + body


def test_split_response_bounds() -> None:
    command = _wire.read_clock_command()
    assert _wire.split_response(command, _response(body=b"abc")) == (b"", b"abc")
    with pytest.raises(_wire.TpmError, match=r"TPM2_ReadClock failed: rc 0x101") as info:
        _wire.split_response(command, _response(rc=0x101))
    assert info.value.rc == 0x101
    assert isinstance(info.value, HostError)
    with pytest.raises(HostError, match="shorter than its header"):
        _wire.split_response(command, b"\x80\x01")
    with pytest.raises(HostError, match="does not match"):
        _wire.split_response(command, _response(body=b"abc")[:-1])
    with pytest.raises(HostError, match="unknown tag"):
        _wire.split_response(command, _response(tag=0x1234))
    load = _wire.load_command(0x80000000, b"\x00\x00", b"\x00\x00")
    with pytest.raises(HostError, match="truncated"):
        _wire.split_response(load, _response(body=b"\x80\x00"))  # a handle is four bytes
    sessions = _response(body=struct.pack(">II", 0x80000001, 99), tag=_wire.TPM_ST_SESSIONS)
    with pytest.raises(HostError, match="past its end"):
        _wire.split_response(load, sessions)


def test_rc_base_masks_parameter_numbers() -> None:
    assert _wire.rc_base(0x1DF) == _wire.RC_INTEGRITY  # ContextLoad after a TPM reset
    assert _wire.rc_base(0x99D) == _wire.RC_POLICY_FAIL  # Unseal, session 1, policy failed
    assert _wire.rc_base(0x902) == _wire.RC_OBJECT_MEMORY


def test_parsers_refuse_malformed_answers() -> None:
    with pytest.raises(HostError, match="truncated"):
        _wire.parse_quote(b"\x00\x10abc")
    with pytest.raises(HostError, match="no signature"):
        _wire.parse_quote(b"\x00\x01a")
    with pytest.raises(HostError, match="trailing"):
        _wire.parse_unseal(b"\x00\x01ab")
    sha1_bank = struct.pack(">IIHB", 0, 1, 0x0004, 3) + b"\x01\x00\x00"
    with pytest.raises(HostError, match="another bank"):
        _wire.parse_pcr_read(sha1_bank, (0,))
    other = struct.pack(">IIHB", 0, 1, 0x000B, 3) + b"\x02\x00\x00" + struct.pack(">I", 1)
    with pytest.raises(HostError, match=r"returned PCRs \[1\]"):
        _wire.parse_pcr_read(other + b"\x00\x20" + bytes(32), (0,))
    with pytest.raises(HostError, match="too many"):
        _wire.parse_get_handles(struct.pack(">BII", 0, 1, 100_000))
    with pytest.raises(HostError, match="PCR"):
        _wire.check_pcrs([24])
    with pytest.raises(HostError, match="once"):
        _wire.check_pcrs([1, 1])


async def _with_fake_tpm(
    answer: Callable[[bytes], Awaitable[bytes | None]],
    body: Callable[[Transport], Awaitable[None]],
) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            while True:
                data = await stream.receive_some(8192)
                if not data:
                    return
                reply = await answer(data)
                if reply is None:
                    return
                await stream.send_all(reply)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            transport = Transport(Tcti("swtpm", host="127.0.0.1", port=port))
            try:
                await body(transport)
            finally:
                await transport.close()
                nursery.cancel_scope.cancel()


async def test_transport_answers_and_retries() -> None:
    seen: list[bytes] = []

    async def answer(command: bytes) -> bytes:
        seen.append(command)
        # the first answer is the TPM's "retry" warning: the transport sends again
        return _response(rc=_wire.RC_RETRY) if len(seen) == 1 else _response(body=b"ok")

    async def body(transport: Transport) -> None:
        assert await transport.call(_wire.read_clock_command()) == (b"", b"ok")
        assert transport.connections == 1

    await _with_fake_tpm(answer, body)
    assert len(seen) == 2


async def test_transport_refuses_an_oversized_answer() -> None:
    async def answer(command: bytes) -> bytes:
        return struct.pack(">HII", 0x8001, 1 << 30, 0)

    async def body(transport: Transport) -> None:
        with pytest.raises(HostError, match="announced a response"):
            await transport.call(_wire.read_clock_command())
        assert not transport.connected  # never used again

    await _with_fake_tpm(answer, body)


async def test_transport_hang_up_is_connection_lost() -> None:
    async def answer(command: bytes) -> None:
        return None

    async def body(transport: Transport) -> None:
        with pytest.raises(ConnectionLost, match="lost the connection"):
            await transport.call(_wire.read_clock_command())
        assert not transport.connected

    await _with_fake_tpm(answer, body)


async def test_cancelled_exchange_closes_the_connection() -> None:
    received = trio.Event()

    async def answer(command: bytes) -> bytes:
        received.set()
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def body(transport: Transport) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.call, _wire.read_clock_command())
                await received.wait()  # sent, no answer yet
                scope.cancel()
        assert not transport.connected  # a half-finished exchange is never reused

    await _with_fake_tpm(answer, body)


PARSERS = [
    _wire.parse_create,
    _wire.parse_quote,
    _wire.parse_unseal,
    lambda p: _wire.parse_pcr_read(p, (0, 7)),
    _wire.parse_read_clock,
    _wire.parse_get_handles,
]


@hypothesis.given(data=st.binary(max_size=600))
@hypothesis.settings(max_examples=300, deadline=None)
def test_any_answer_is_a_value_or_a_host_error(data: bytes) -> None:
    """Whatever a TPM (or something posing as one) answers, parsing raises HostError or
    returns: never another exception."""
    for command in (_wire.read_clock_command(), _wire.load_command(0x80000000, b"", b"")):
        with contextlib.suppress(HostError):
            _wire.split_response(command, data)
    for parse in PARSERS:
        with contextlib.suppress(HostError):
            parse(data)
