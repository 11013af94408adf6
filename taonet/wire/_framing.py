"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

This is the framing of every Tao stream (host and hosted program, domain service,
peer protocols). An empty frame is legal. The original caps frames at 20 MiB;
:data:`MAX_FRAME_CEILING` keeps that as the hard ceiling and every decoder takes a
lower ``max_frame`` (network-facing servers default to :data:`DEFAULT_MAX_FRAME`).

:class:`FrameDecoder` is a pure state machine (feed bytes, take frames); the channel
layer drives it from a stream. It reads each frame's header only when asked for that
frame, so a protocol can give each frame its own, lower limit (a Tao RPC header frame
is tiny; the body's limit depends on the method the header names). A length over the
limit is refused as soon as the 4 header bytes are in, before any buffer for the body
is allocated. A frame longer than :data:`LARGE_FRAME` gets a buffer of its own, an
anonymous memory mapping of exactly its length made once the length has passed: pages
are only touched as bytes arrive (a peer that announces much and sends little costs
what it sent), the buffer never grows by copying, and it goes back to the operating
system as soon as the frame is complete or the decoder is cleared (heap memory freed
by the C allocator often stays with the process).
"""

from __future__ import annotations

import mmap
import struct
from typing import Final

from taonet._errors import CodecError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "LARGE_FRAME",
    "MAX_FRAME_CEILING",
    "FrameDecoder",
    "encode_frame",
]

MAX_FRAME_CEILING: Final = 20 * 1024 * 1024
DEFAULT_MAX_FRAME: Final = 1024 * 1024
#: Frames longer than this are received into a buffer of their own (see the module docstring).
LARGE_FRAME: Final = 64 * 1024
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
    """Incremental decoder: :meth:`feed` bytes, then :meth:`next_frame` until None.

    ``max_frame`` is the limit of every frame; :meth:`next_frame` and
    :meth:`peek_length` take a lower one for the next frame. A frame over its limit
    raises :class:`~taonet.CodecError` from those methods (every time they are asked
    for it): the stream cannot be resynchronized after that.
    """

    __slots__ = ("_buffer", "_filled", "_large", "_max_frame", "_need")

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._max_frame = _check_limit(max_frame)
        # Received bytes not yet part of a returned frame, except those of a large
        # frame in progress, which go to ``_large``.
        self._buffer = bytearray()
        self._need: int | None = None  # body length once the header is in
        self._large: mmap.mmap | None = None
        self._filled = 0  # bytes of the large frame received

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame (a parsed frame
        header is not held: it is 4 bytes fewer)."""
        return len(self._buffer) + self._filled

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (checked when a frame is asked for)."""
        large = self._large
        if large is not None and self._need is not None:
            with memoryview(data) as view:
                take = min(len(view), self._need - self._filled)
                large[self._filled : self._filled + take] = view[:take]
                self._filled += take
                if take < len(view):
                    self._buffer += view[take:]
        else:
            self._buffer += data

    def _limit(self, max_frame: int | None) -> int:
        limit = self._max_frame
        if max_frame is not None and max_frame != limit:
            if type(max_frame) is not int:  # not a bool either
                raise TypeError("max_frame must be an int")
            if max_frame < 0:
                raise ValueError("max_frame must not be negative")
            limit = min(max_frame, limit)
        return limit

    def _header(self, limit: int) -> int | None:
        """The length of the frame in progress (its header read and checked), or None."""
        need = self._need
        if need is None:
            buf = self._buffer
            if len(buf) < 4:
                return None
            (need,) = _HEADER.unpack_from(buf)
            if need > limit:
                raise CodecError(f"frame of {need} bytes is over the {limit}-byte limit")
            del buf[:4]
            self._need = need
            if need > LARGE_FRAME:
                large = mmap.mmap(-1, need)
                take = min(len(buf), need)
                with memoryview(buf) as view, view[:take] as part:
                    large[:take] = part
                del buf[:take]
                self._large, self._filled = large, take
        elif need > limit:
            raise CodecError(f"frame of {need} bytes is over the {limit}-byte limit")
        return need

    def peek_length(self, *, max_frame: int | None = None) -> int | None:
        """The next frame's length once its header is in (else None), not consuming it.

        CodecError if it is over ``max_frame`` (default: the decoder's limit).
        """
        return self._header(self._limit(max_frame))

    def next_frame(self, *, max_frame: int | None = None) -> bytes | None:
        """The next complete frame, or None; CodecError if it is over ``max_frame``
        (default: the decoder's limit)."""
        buf = self._buffer
        if self._need is None and len(buf) < 4:
            return None
        limit = self._max_frame if max_frame is None else self._limit(max_frame)
        if self._need is None:
            # The common case, a small frame whose header has just come: one pass.
            (need,) = _HEADER.unpack_from(buf)
            if need <= LARGE_FRAME and need <= limit and len(buf) >= 4 + need:
                frame = bytes(buf[4 : 4 + need])  # small: two copies beat a memoryview
                del buf[: 4 + need]
                return frame
        need = self._header(limit)
        if need is None:
            return None
        large = self._large
        if large is not None:
            if self._filled < need:
                return None
            frame = large[:need]
            large.close()
            self._large, self._filled = None, 0
        else:
            if len(buf) < need:
                return None
            frame = bytes(buf[:need])  # at most LARGE_FRAME bytes
            del buf[:need]
        self._need = None
        return frame

    def wanted(self) -> int:
        """How many more bytes complete the frame in progress (at least 1)."""
        if self._need is None:
            return max(1, 4 - len(self._buffer))
        if self._large is not None:
            return max(1, self._need - self._filled)
        return max(1, self._need - len(self._buffer))

    def clear(self) -> None:
        """Drop everything held (the stream is done): its memory is freed at once."""
        if self._large is not None:
            self._large.close()
        self._large, self._filled, self._need = None, 0, None
        self._buffer = bytearray()
