"""Frames: round trips in any chunking, limits enforced before allocation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError
from taonet.wire import MAX_FRAME_CEILING, FrameDecoder, encode_frame


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
    with pytest.raises(CodecError, match="over the 10-byte limit"):
        decoder.feed((11).to_bytes(4, "big"))
    with pytest.raises(CodecError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


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


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=64)
    try:
        decoder.feed(data)
    except CodecError:
        return
    drain(decoder)
