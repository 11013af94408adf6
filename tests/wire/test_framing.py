"""Frames: round trips in any chunking, limits enforced before allocation, large frames
in buffers of their own that hold only what arrived and are freed at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError
from taonet.wire import MAX_FRAME_CEILING, FrameDecoder, encode_frame
from taonet.wire._framing import LARGE_FRAME


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


@given(
    st.lists(st.binary(max_size=300), max_size=10),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
def test_round_trip_in_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(max_frame=1000)
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        decoder.feed(stream[pos : pos + step])
        out += drain(decoder)
        pos += step
        i += 1
    assert out == payloads
    assert decoder.buffered == 0


def test_empty_frame_is_legal() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"") + encode_frame(b"x"))
    assert drain(decoder) == [b"", b"x"]


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(encode_frame(b"0123456789"))
    assert drain(decoder) == [b"0123456789"]
    decoder.feed((11).to_bytes(4, "big"))
    with pytest.raises(CodecError, match="over the 10-byte limit"):
        decoder.next_frame()
    with pytest.raises(CodecError, match="over the 10-byte limit"):  # and it stays refused
        decoder.peek_length()
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(CodecError):
        decoder.next_frame()


def test_each_frame_may_have_its_own_lower_limit() -> None:
    # Header and body in one read: the body's length is judged by the limit given
    # when the body is asked for, not when the bytes came in.
    decoder = FrameDecoder(max_frame=1000)
    decoder.feed(encode_frame(b"op") + encode_frame(b"x" * 100) + encode_frame(b"y" * 100))
    assert decoder.next_frame(max_frame=8) == b"op"
    assert decoder.peek_length(max_frame=100) == 100
    assert decoder.next_frame(max_frame=100) == b"x" * 100
    with pytest.raises(CodecError, match="over the 99-byte limit"):
        decoder.peek_length(max_frame=99)
    with pytest.raises(CodecError, match="over the 99-byte limit"):
        decoder.next_frame(max_frame=99)
    # A frame limit cannot exceed the decoder's.
    assert decoder.next_frame(max_frame=10**6) == b"y" * 100
    decoder.feed((1001).to_bytes(4, "big"))
    with pytest.raises(CodecError, match="over the 1000-byte limit"):
        decoder.next_frame(max_frame=5000)


@given(
    st.lists(
        st.sampled_from([0, 1, LARGE_FRAME, LARGE_FRAME + 1, 3 * LARGE_FRAME + 7]), max_size=4
    ),
    st.lists(st.integers(1, 2 * LARGE_FRAME), min_size=1, max_size=8),
)
def test_large_frames_round_trip_in_any_chunking(sizes: list[int], cuts: list[int]) -> None:
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(max_frame=4 * LARGE_FRAME)
    out: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        decoder.feed(stream[pos : pos + step])
        out += drain(decoder)
        pos += step
        i += 1
    assert out == payloads
    assert decoder.buffered == 0


def test_a_large_frame_holds_what_arrived_and_is_freed_when_cleared() -> None:
    size = MAX_FRAME_CEILING
    decoder = FrameDecoder(max_frame=size)
    decoder.feed(size.to_bytes(4, "big") + b"a")
    assert decoder.peek_length() == size
    chunk = b"b" * (1 << 20)
    before = _rss()
    assert decoder.next_frame() is None
    # Announcing 20 MiB and sending one byte costs one page, not 20 MiB.
    assert _rss() - before < 1 << 20
    for _ in range(16):
        decoder.feed(chunk)
    assert decoder.next_frame() is None
    assert decoder.buffered == 16 * len(chunk) + 1
    assert decoder.wanted() == size - decoder.buffered
    held = _rss()
    assert held - before > 15 << 20
    decoder.clear()
    # The buffer goes back to the system, not to a heap that keeps it.
    assert _rss() - before < 1 << 20
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_truncated_frame_stays_partial() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    decoder.feed(frame[:-1])
    assert decoder.next_frame() is None
    assert decoder.buffered == 4  # the header is consumed; 4 of 5 body bytes wait
    assert decoder.wanted() == 1
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == b"hello"


def test_limits() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_frame(b"xx", max_frame=1)
    for bad in (-1, MAX_FRAME_CEILING + 1):
        with pytest.raises(ValueError, match="max_frame"):
            FrameDecoder(max_frame=bad)
    assert FrameDecoder(max_frame=MAX_FRAME_CEILING).max_frame == MAX_FRAME_CEILING


@given(st.binary(max_size=200), st.integers(0, 80))
def test_random_bytes_only_raise_codec_error(data: bytes, limit: int) -> None:
    decoder = FrameDecoder(max_frame=64)
    decoder.feed(data)
    try:
        decoder.peek_length(max_frame=limit)
        drain(decoder)
    except CodecError:
        return
