"""The message layer: length-prefixed frames over any :class:`trio.abc.Stream`.

:class:`MessageStream` turns a byte stream (a TLS stream, a socket, a memory
stream) into a stream of whole messages using the framing of
:mod:`taonet.wire` (a 4-byte big-endian length, then the payload). It adds no
bytes of its own, so it talks to any peer that speaks Tao framing.

* Sends are serialized by a lock: concurrent :meth:`~MessageStream.send_message`
  calls never interleave their frames. A send that fails or is cancelled part way
  may have written part of a frame, so the sending side is then broken and later
  sends raise :class:`trio.BrokenResourceError`.
* Only one task may receive at a time; a second concurrent receiver gets
  :class:`trio.BusyResourceError`.
* Every incoming length is checked against ``max_frame`` (or the lower
  ``max_size`` the receiver gives for that one message) as soon as its 4 header
  bytes arrive, before any body is read (:class:`~taonet.CodecError`). A long
  message is received into a buffer of its own, allocated once its length has
  passed and freed when it is complete or the stream is closed (see
  :class:`~taonet.wire.FrameDecoder`). After a framing error the receiving side is
  broken: later receives raise :class:`trio.BrokenResourceError` chained from the
  original error.
* With ``frame_timeout``, a message whose first byte has arrived must be complete
  within that many seconds, or the receive raises :class:`~taonet.ProtocolError`
  (and the receiving side is broken): a peer cannot hold a partial message, and
  the memory it takes, indefinitely. Waiting for a message to begin is not limited.
* The peer closing exactly between frames ends the channel
  (:class:`trio.EndOfChannel`); closing inside a frame is a
  :class:`~taonet.ProtocolError`.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import trio
from google.protobuf.message import EncodeError, Message

from taonet._errors import CodecError, ProtocolError
from taonet.wire._framing import DEFAULT_MAX_FRAME, FrameDecoder
from taonet.wire._schema import parse, serialize

__all__ = ["MessageStream"]

#: Largest read from the underlying stream, and the size above which a payload is
#: sent with a separate header write instead of being copied after it.
CHUNK_SIZE: Final = 64 * 1024
_HEADER: Final = struct.Struct(">I")


async def take(lock: trio.Lock) -> None:
    """Acquire ``lock``; when it is free, without a trip through the scheduler.

    Callers must reach a checkpoint soon after (here: the I/O the lock guards).
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class MessageStream(trio.abc.AsyncResource):
    """Whole messages over ``stream``; frames longer than ``max_frame`` are refused.

    ``stream`` stays available as an attribute (for example to read the verified
    peer of a TLS stream). Closing the MessageStream closes ``stream``. With
    ``frame_timeout`` (seconds), a message must be complete that long after its
    first byte arrived (see the module docstring).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        frame_timeout: float | None = None,
    ) -> None:
        if frame_timeout is not None and (
            isinstance(frame_timeout, bool)
            or not isinstance(frame_timeout, int | float)
            or not frame_timeout > 0
        ):
            raise ValueError(f"frame_timeout must be a positive number, got {frame_timeout!r}")
        self.stream = stream
        self._decoder = FrameDecoder(max_frame=max_frame)  # validates max_frame
        self._max_frame = max_frame
        self._frame_timeout = frame_timeout
        self._partial = 0  # bytes of unfinished messages received (headers included)
        self._started: float | None = None  # when the first of those bytes arrived
        self._send_lock = trio.Lock()
        self._send_broken: BaseException | None = None
        self._receiving = False
        self._receive_broken: BaseException | None = None
        self._eof = False

    @property
    def max_frame(self) -> int:
        """The largest payload this stream sends or accepts."""
        return self._max_frame

    @property
    def frame_timeout(self) -> float | None:
        """Seconds a message may take once its first byte is in (None: no limit)."""
        return self._frame_timeout

    async def send_message(self, payload: bytes) -> None:
        """Send ``payload`` as one frame.

        ValueError (and nothing sent) if it is longer than :attr:`max_frame`.
        """
        await self.send_messages(payload)

    async def send_messages(self, *payloads: bytes) -> None:
        """Send each payload as a frame, back to back, with nothing interleaved.

        Small frames go out in one write (a Tao RPC header and body cost one system
        call, not two). ValueError, and nothing sent, if any is over :attr:`max_frame`.
        """
        for payload in payloads:
            if len(payload) > self._max_frame:
                raise ValueError(
                    f"a {len(payload)}-byte message is over the {self._max_frame}-byte limit"
                )
        await take(self._send_lock)
        try:
            if self._send_broken is not None:
                raise trio.BrokenResourceError(
                    "an earlier send failed part way; this message stream cannot send"
                ) from self._send_broken
            try:
                if sum(len(p) for p in payloads) <= CHUNK_SIZE:
                    await self.stream.send_all(b"".join(_HEADER.pack(len(p)) + p for p in payloads))
                else:
                    for payload in payloads:
                        await self.stream.send_all(_HEADER.pack(len(payload)))
                        await self.stream.send_all(payload)
            except BaseException as exc:
                self._send_broken = exc
                raise
        finally:
            self._send_lock.release()

    async def receive_message(self, *, max_size: int | None = None) -> bytes:
        """The next message.

        ``max_size`` lowers the limit for this one message (it cannot raise it over
        :attr:`max_frame`). Raises :class:`trio.EndOfChannel` when the peer closed
        between frames, :class:`~taonet.ProtocolError` when it closed inside one or
        the message did not arrive within :attr:`frame_timeout`, and
        :class:`~taonet.CodecError` when a frame header announces more than the limit.
        """
        limit = self._max_frame if max_size is None else self._limit(max_size)
        self._enter_receive()
        try:
            while (frame := self._take_frame(limit)) is None:
                await self._read_more()
            return frame
        finally:
            self._receiving = False

    def receive_message_nowait(self, *, max_size: int | None = None) -> bytes:
        """The next message if it has been received whole already; else
        :class:`trio.WouldBlock`. The same limits and errors as :meth:`receive_message`."""
        limit = self._limit(max_size)
        self._enter_receive()
        try:
            frame = self._take_frame(limit)
        finally:
            self._receiving = False
        if frame is None:
            raise trio.WouldBlock
        return frame

    async def peek_length(self, *, max_size: int | None = None) -> int:
        """The length of the next message, once its 4 header bytes are in.

        The message stays to be received. The same limits and errors as
        :meth:`receive_message`: a protocol can look at the length (to reserve
        memory for it, say) before the body is read.
        """
        limit = self._limit(max_size)
        self._enter_receive()
        try:
            while True:
                try:
                    length = self._decoder.peek_length(max_frame=limit)
                except CodecError as exc:
                    self._receive_broken = exc
                    raise
                if length is not None:
                    return length
                await self._read_more()
        finally:
            self._receiving = False

    def _limit(self, max_size: int | None) -> int:
        if max_size is None:
            return self._max_frame
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise ValueError(f"max_size must be a non-negative int, got {max_size!r}")
        return min(self._max_frame, max_size)

    def _enter_receive(self) -> None:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this message stream")
        if self._receive_broken is not None:
            raise trio.BrokenResourceError(
                "this message stream cannot receive after an earlier error"
            ) from self._receive_broken
        self._receiving = True

    def _take_frame(self, limit: int) -> bytes | None:
        try:
            frame = self._decoder.next_frame(max_frame=limit)
        except CodecError as exc:
            self._receive_broken = exc
            raise
        if frame is not None:
            self._partial -= 4 + len(frame)
            if self._frame_timeout is not None:
                self._started = trio.current_time() if self._partial else None
        return frame

    async def _read_more(self) -> None:
        if self._eof:
            raise trio.EndOfChannel
        started = self._started
        if started is None or self._frame_timeout is None:
            data = await self.stream.receive_some(CHUNK_SIZE)
        else:
            data = None
            with trio.move_on_at(started + self._frame_timeout):
                data = await self.stream.receive_some(CHUNK_SIZE)
            if data is None:
                exc: Exception = ProtocolError(
                    f"a message did not arrive within {self._frame_timeout} s of its first byte"
                )
                self._receive_broken = exc
                raise exc
        if not data:
            self._eof = True
            if self._partial:
                exc = ProtocolError(self._truncation_message())
                self._receive_broken = exc
                raise exc
            raise trio.EndOfChannel
        if not self._partial and self._frame_timeout is not None:
            self._started = trio.current_time()
        self._partial += len(data)
        self._decoder.feed(data)

    def _truncation_message(self) -> str:
        if self._partial < 4:
            return f"peer closed mid-frame: {self._partial} of 4 header bytes"
        received = self._decoder.buffered
        expected = received + self._decoder.wanted()
        return f"peer closed mid-frame: {received} of {expected} bytes"

    async def send_proto(self, msg: Message) -> None:
        """Serialize a :mod:`taonet.wire` message and send it as one frame.

        ValueError if a required field is unset or the message is too long.
        """
        try:
            data = serialize(msg)
        except EncodeError as exc:
            raise ValueError(f"cannot serialize {msg.DESCRIPTOR.name}: {exc}") from exc
        await self.send_message(data)

    async def receive_proto(self, name: str) -> Any:
        """Receive one frame and parse it as the :mod:`taonet.wire` message ``name``.

        A malformed message is :class:`~taonet.CodecError`; the stream stays usable
        (the frame boundary is intact).
        """
        return parse(name, await self.receive_message())

    async def aclose(self) -> None:
        """Close the underlying stream; whatever was received and not taken is freed."""
        self._decoder.clear()
        self._partial = 0
        self._started = None
        await self.stream.aclose()
