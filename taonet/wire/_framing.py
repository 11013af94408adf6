"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

This is the framing of every Tao stream (host and hosted program, domain service,
peer protocols). An empty frame is legal. The original caps frames at 20 MiB;
:data:`MAX_FRAME_CEILING` keeps that as the hard ceiling and every decoder takes a
lower ``max_frame`` (network-facing servers default to :data:`DEFAULT_MAX_FRAME`).
A length over the limit is refused as soon as the 4 header bytes are in, before any
buffer for the body is allocated.

:class:`FrameDecoder` is a pure state machine (feed bytes, take frames); the channel
layer drives it from a stream.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from taonet._errors import CodecError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_FRAME_CEILING",
    "FrameDecoder",
    "encode_frame",
]

MAX_FRAME_CEILING: Final = 20 * 1024 * 1024
DEFAULT_MAX_FRAME: Final = 1024 * 1024
_HEADER: Final = struct.Struct(">I")


def _check_limit(max_frame: int) -> int:
    if isinstance(max_frame, bool) or not isinstance(max_frame, int):
        raise TypeError("max_frame must be an int")
    if not 0 <= max_frame <= MAX_FRAME_CEILING:
        raise ValueError(f"max_frame must be from 0 to {MAX_FRAME_CEILING}")
    return max_frame


def encode_frame(payload: bytes, *, max_frame: int = MAX_FRAME_CEILING) -> bytes:
    """The frame for ``payload``; ValueError if it is longer than ``max_frame``."""
    if len(payload) > _check_limit(max_frame):
        raise ValueError(f"a {len(payload)}-byte frame is over the {max_frame}-byte limit")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes, then :meth:`next_frame` until None."""

    __slots__ = ("_buffer", "_frames", "_max_frame", "_need")

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = _check_limit(max_frame)
        self._buffer = bytearray()
        self._frames: deque[bytes] = deque()
        self._need: int | None = None  # body length once the header is in

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; CodecError if a frame header announces too much."""
        self._buffer += data
        buf = self._buffer
        while True:
            if self._need is None:
                if len(buf) < 4:
                    return
                (length,) = _HEADER.unpack_from(buf)
                if length > self._max_frame:
                    raise CodecError(
                        f"frame of {length} bytes is over the {self._max_frame}-byte limit"
                    )
                del buf[:4]
                self._need = length
            if len(buf) < self._need:
                return
            self._frames.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = None

    def wanted(self) -> int:
        """How many more bytes complete the frame in progress (at least 1)."""
        if self._need is None:
            return max(1, 4 - len(self._buffer))
        return max(1, self._need - len(self._buffer))

    def next_frame(self) -> bytes | None:
        """The oldest complete frame, or None."""
        return self._frames.popleft() if self._frames else None
