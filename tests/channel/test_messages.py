"""MessageStream: whole frames over any trio stream, limits, truncation, concurrency."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, ProtocolError
from taonet._messages import CHUNK_SIZE, MessageStream
from taonet.wire import encode_frame, message_class

TIMEOUT = 5


def message_pair(
    *, lockstep: bool = False, max_frame: int = 1024 * 1024
) -> tuple[MessageStream, MessageStream]:
    left, right = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    return MessageStream(left, max_frame=max_frame), MessageStream(right, max_frame=max_frame)


async def exchange(payloads: list[bytes], *, lockstep: bool) -> list[bytes]:
    sender, receiver = message_pair(lockstep=lockstep)
    received: list[bytes] = []

    async def send_all() -> None:
        for payload in payloads:
            await sender.send_message(payload)
        await sender.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        while True:
            try:
                received.append(await receiver.receive_message())
            except trio.EndOfChannel:
                break
    return received


@given(st.lists(st.binary(max_size=200), max_size=12), st.booleans())
async def test_round_trip(payloads: list[bytes], lockstep: bool) -> None:
    with trio.fail_after(TIMEOUT):
        assert await exchange(payloads, lockstep=lockstep) == payloads


@pytest.mark.parametrize("lockstep", [False, True])
async def test_round_trip_empty_and_large(lockstep: bool) -> None:
    payloads = [b"", bytes(range(256)) * 1000, b"", b"x", bytes(CHUNK_SIZE), bytes(CHUNK_SIZE + 1)]
    with trio.fail_after(TIMEOUT):
        assert await exchange(payloads, lockstep=lockstep) == payloads


@given(
    st.lists(st.binary(max_size=100), min_size=1, max_size=8),
    st.lists(st.integers(1, 40), min_size=1, max_size=10),
)
async def test_chunked_delivery(payloads: list[bytes], cuts: list[int]) -> None:
    with trio.fail_after(TIMEOUT):
        raw, peer = trio.testing.lockstep_stream_pair()
        receiver = MessageStream(peer)
        data = b"".join(encode_frame(p) for p in payloads)
        received: list[bytes] = []

        async def dribble() -> None:
            pos, i = 0, 0
            while pos < len(data):
                step = cuts[i % len(cuts)]
                await raw.send_all(data[pos : pos + step])
                pos, i = pos + step, i + 1
            await raw.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            for _ in payloads:
                received.append(await receiver.receive_message())
            with pytest.raises(trio.EndOfChannel):
                await receiver.receive_message()
        assert received == payloads


async def test_several_frames_in_one_read() -> None:
    with trio.fail_after(TIMEOUT):
        raw, peer = trio.testing.memory_stream_pair()
        receiver = MessageStream(peer)
        await raw.send_all(encode_frame(b"a") + encode_frame(b"") + encode_frame(b"bc"))
        assert [await receiver.receive_message() for _ in range(3)] == [b"a", b"", b"bc"]


async def test_oversized_incoming_header_is_refused_before_the_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The sender only ever sends the header: a receiver that waited for the body
    # would hang until fail_after fires (instantly, with the autojump clock).
    with trio.fail_after(TIMEOUT):
        raw, peer = trio.testing.lockstep_stream_pair()
        receiver = MessageStream(peer, max_frame=100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.send_all, (101).to_bytes(4, "big"))
            with pytest.raises(CodecError, match="101 bytes is over the 100-byte limit"):
                await receiver.receive_message()
        # The stream is unusable from then on.
        with pytest.raises(trio.BrokenResourceError) as info:
            await receiver.receive_message()
        assert isinstance(info.value.__cause__, CodecError)


async def test_exactly_max_frame_is_accepted() -> None:
    with trio.fail_after(TIMEOUT):
        sender, receiver = message_pair(max_frame=100)
        await sender.send_message(bytes(100))
        assert await receiver.receive_message() == bytes(100)


async def test_oversized_outgoing_is_refused_and_nothing_is_written() -> None:
    with trio.fail_after(TIMEOUT):
        raw = trio.testing.MemorySendStream()  # keeps what is sent in its buffer
        sender = MessageStream(raw, max_frame=10)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="11-byte message is over the 10-byte limit"):
            await sender.send_message(bytes(11))
        with pytest.raises(trio.WouldBlock):  # nothing at all was written
            raw.get_data_nowait()
        # The stream is still usable.
        await sender.send_message(b"ok")
        assert raw.get_data_nowait() == encode_frame(b"ok")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "2 of 4 header bytes"),
        (b"\x00\x00\x00\x05", "0 of 5 bytes"),
        (b"\x00\x00\x00\x05abc", "3 of 5 bytes"),
        (encode_frame(b"whole") + b"\x00\x00\x00\x05abcd", "4 of 5 bytes"),
    ],
)
async def test_truncated_stream_is_a_protocol_error(data: bytes, message: str) -> None:
    with trio.fail_after(TIMEOUT):
        raw, peer = trio.testing.memory_stream_pair()
        receiver = MessageStream(peer)
        await raw.send_all(data)
        await raw.aclose()
        if data.startswith(encode_frame(b"whole")):
            assert await receiver.receive_message() == b"whole"
        with pytest.raises(ProtocolError, match=f"peer closed mid-frame: {message}"):
            await receiver.receive_message()
        with pytest.raises(trio.BrokenResourceError):
            await receiver.receive_message()


async def test_clean_eof_is_end_of_channel() -> None:
    with trio.fail_after(TIMEOUT):
        sender, receiver = message_pair()
        await sender.send_message(b"last")
        await sender.aclose()
        assert await receiver.receive_message() == b"last"
        with pytest.raises(trio.EndOfChannel):
            await receiver.receive_message()
        with pytest.raises(trio.EndOfChannel):  # and it stays ended
            await receiver.receive_message()


@pytest.mark.parametrize("size", [1000, 3 * CHUNK_SIZE])
async def test_concurrent_senders_do_not_interleave(size: int) -> None:
    # Large payloads take two send_all calls each: without the send lock, the
    # lockstep stream would let another task's frame in between.
    senders = 20
    with trio.fail_after(TIMEOUT):
        sender, receiver = message_pair(lockstep=True)
        received: list[bytes] = []

        async def send(tag: int) -> None:
            for _ in range(3):
                await sender.send_message(bytes([tag]) * size)

        async def receive() -> None:
            for _ in range(senders * 3):
                received.append(await receiver.receive_message())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for tag in range(senders):
                nursery.start_soon(send, tag)
        assert len(received) == senders * 3
        for frame in received:
            assert len(frame) == size
            assert frame == frame[:1] * size
        assert sorted(frame[0] for frame in received) == sorted(list(range(senders)) * 3)


async def test_concurrent_receivers_are_refused() -> None:
    with trio.fail_after(TIMEOUT):
        sender, receiver = message_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver.receive_message)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await receiver.receive_message()
            await sender.send_message(b"done")


async def test_cancelled_send_breaks_the_sending_side(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(TIMEOUT):
        sender, _receiver = message_pair(lockstep=True)  # nobody receives: send blocks
        with trio.move_on_after(1):
            await sender.send_message(bytes(3 * CHUNK_SIZE))
        with pytest.raises(trio.BrokenResourceError):
            await sender.send_message(b"next")


async def test_proto_round_trip() -> None:
    with trio.fail_after(TIMEOUT):
        sender, receiver = message_pair()
        header = message_class("RPCHeader")(op="Tao.GetTaoName", seq=2**64 - 1, error="")
        await sender.send_proto(header)
        got = await receiver.receive_proto("RPCHeader")
        assert got == header
        assert (got.op, got.seq) == ("Tao.GetTaoName", 2**64 - 1)


async def test_proto_missing_required_field_is_refused_before_sending() -> None:
    with trio.fail_after(TIMEOUT):
        sender, _ = message_pair()
        with pytest.raises(ValueError, match="RPCHeader"):
            await sender.send_proto(message_class("RPCHeader")(op="x"))


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff", b"", b"\x0a\x05ab", random.Random(7).randbytes(64)],
)
async def test_garbage_proto_is_a_codec_error(garbage: bytes) -> None:
    with trio.fail_after(TIMEOUT):
        sender, receiver = message_pair()
        await sender.send_message(garbage)
        await sender.send_proto(message_class("RPCHeader")(op="after", seq=1))
        with pytest.raises(CodecError):
            await receiver.receive_proto("RPCHeader")
        # The frame boundary survives a bad message.
        assert (await receiver.receive_proto("RPCHeader")).op == "after"


async def test_max_frame_is_validated() -> None:
    raw, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="max_frame"):
        MessageStream(raw, max_frame=21 * 1024 * 1024)
    assert MessageStream(raw, max_frame=5).max_frame == 5


async def test_aclose_closes_the_stream() -> None:
    with trio.fail_after(TIMEOUT):
        sender, _ = message_pair()
        async with sender:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await sender.stream.send_all(b"x")
