"""The protorpc envelope, sans I/O: one machine for every protocol that speaks it.

Wire format (the original CloudProxy's protorpc, on the framing of
:mod:`taonet.wire._framing`): a request is two frames, an ``RPCHeader{op, seq}`` and
then the request body (the protocol's own message); a response is two frames, an
``RPCHeader{op, seq, error?}`` and then the response body, which is empty when
``error`` is set. Sequence numbers let a client have several calls in flight.

:class:`Envelope` is one end of such a connection, in the style of h11: the driver
feeds it what it received (:meth:`Envelope.receive_data`; ``b""`` marks the end of
the stream) and takes events (:meth:`Envelope.next_event`): a :class:`Request` on a
server, a :class:`Response` on a client, :data:`NEED_DATA`, or :data:`END_OF_STREAM`
when the peer closed between messages. The machine decides what is wrong, not the
driver: a header frame over its limit (small), a body frame over the limit its
protocol gives the method the header names, a header that does not decode, and a
stream that ends inside a message all raise from :meth:`~Envelope.next_event`
(:class:`~taonet.CodecError`, or :class:`~taonet.ProtocolError` for truncation), and
every later call raises the same: the stream cannot be resynchronized. Sending is
:meth:`Envelope.request` and :meth:`Envelope.response`, which return the bytes to
write.

Every answer names the call it ends. A server's response, error or not, echoes the op
and seq of the request it answers. When the server's machine fails on a request whose
header it has read (its body over the limit, or a frame that does not decode), the
machine keeps that op and seq, and :meth:`Envelope.answer_failure` gives the error
response to send before closing, so the client learns which call failed and why; a
failure before a header was read names no call and gets no answer (the original's
server closes then too), nor does a request the peer cut short (it has gone). After
such a failure the stream cannot continue (:attr:`Envelope.broken`); an error the
driver answers for a whole request (an unknown method, a body its protocol cannot
decode) leaves the stream usable. A client's machine remembers the op of every
request it sent until its answer came (:attr:`Envelope.awaiting`), and checks each
response's header against them as soon as it is read: an answer to a call nobody made
or under another op is a :class:`~taonet.ProtocolError` that breaks the stream, while
a matching error response is a :class:`Response` carrying the server's error for that
call alone.

Error kinds (one encoding for every protocol): the header's ``error`` string is
``"<Kind>: message"``, where Kind is the name of the nearest class of the
:class:`~taonet.TaoError` tree in :data:`ERROR_KINDS` (``NotSupportedError``,
``HostError``, ``CodecError``, ...), and the receiver raises that class again
(:func:`decode_error`). The original CloudProxy reads the error field as plain text,
so it shows the kind as part of the message; a string from a peer without a known
kind prefix (the original's own errors) becomes the receiver's default class
(:class:`~taonet.HostError` unless the protocol says otherwise). Messages are cut at
:data:`MAX_ERROR_MESSAGE` characters. No code needs to match error text to know a
kind.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    NotSupportedError,
    ProtocolError,
    TaoError,
)
from taonet.wire._framing import LARGE_FRAME, MAX_FRAME_CEILING, FrameDecoder, encode_frame
from taonet.wire._schema import message_class, parse, serialize

__all__ = [
    "END_OF_STREAM",
    "ERROR_KINDS",
    "MAX_ERROR_MESSAGE",
    "MAX_REQUEST_HEADER",
    "MAX_RESPONSE_HEADER",
    "NEED_DATA",
    "Envelope",
    "Request",
    "Response",
    "Role",
    "Signal",
    "decode_error",
    "encode_error",
]

#: Largest request header frame (an operation name and a sequence number).
MAX_REQUEST_HEADER: Final = 4096
#: Largest response header frame (the operation echoed, and an error message).
MAX_RESPONSE_HEADER: Final = 64 * 1024
#: Longest error message put on the wire, in characters (the rest is cut).
MAX_ERROR_MESSAGE: Final = 4096
_UINT64_MAX: Final = 2**64 - 1

#: The error kinds on the wire, by the stable name each travels under.
ERROR_KINDS: Final[Mapping[str, type[TaoError]]] = MappingProxyType(
    {
        cls.__name__: cls
        for cls in (
            TaoError,
            CodecError,
            AuthenticationError,
            AuthorizationError,
            HostError,
            NotSupportedError,
            ConfigError,
            ProtocolError,
        )
    }
)
_KIND_OF: Final[Mapping[type[TaoError], str]] = MappingProxyType(
    {cls: name for name, cls in ERROR_KINDS.items()}
)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def encode_error(exc: TaoError) -> str:
    """``"<Kind>: message"`` for ``exc``, Kind the nearest class of :data:`ERROR_KINDS`."""
    kind = next(_KIND_OF[cls] for cls in type(exc).__mro__ if cls in _KIND_OF)
    return f"{kind}: {_clip(str(exc) or type(exc).__name__, MAX_ERROR_MESSAGE)}"


def decode_error(text: str | bytes, *, default: type[TaoError] = HostError) -> TaoError:
    """The error a header's ``error`` string stands for (see the module docstring).

    A string without a known kind prefix is ``default(text)``. The message is cut at
    :data:`MAX_ERROR_MESSAGE` characters, whatever the peer sent.
    """
    if isinstance(text, bytes):  # a proto2 string that is not UTF-8 comes back as bytes
        text = text.decode("utf-8", "replace")
    kind, sep, message = text.partition(": ")
    cls = ERROR_KINDS.get(kind) if sep else None
    if cls is None:
        return default(_clip(text, MAX_ERROR_MESSAGE))
    return cls(_clip(message, MAX_ERROR_MESSAGE))


class Role(enum.Enum):
    """Which end of the connection an :class:`Envelope` is."""

    CLIENT = "client"
    SERVER = "server"


class Signal(enum.Enum):
    """What :meth:`Envelope.next_event` returns when it has no message."""

    NEED_DATA = "need data"
    END_OF_STREAM = "end of stream"


#: Feed more bytes (:meth:`Envelope.receive_data`) before asking again.
NEED_DATA: Final = Signal.NEED_DATA
#: The peer closed the stream between messages.
END_OF_STREAM: Final = Signal.END_OF_STREAM


@dataclass(frozen=True, slots=True)
class Request:
    """A whole request: its operation, sequence number and body (undecoded)."""

    op: str
    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """A whole response: the operation it answers, its sequence number, and either a
    body (undecoded) or the error the server answered with (``body`` is then empty)."""

    op: str
    seq: int
    body: bytes
    error: TaoError | None


Event = Request | Response | Signal
#: A body limit: one for every method, or one per method name.
BodyLimit = int | Callable[[str], int]


def _header_op(header: Any) -> str:
    op = header.op
    # A proto2 string that is not UTF-8 comes back as bytes: keep it printable.
    return op if isinstance(op, str) else repr(op)


class Envelope:
    """One end of a protorpc connection (see the module docstring).

    ``body_limit`` bounds the body frames received: an int for every method, or a
    function of the method name the header carries (a protocol's per-method limits;
    it must return an int). ``header_limit`` bounds the header frames received
    (default: :data:`MAX_REQUEST_HEADER` on a server, :data:`MAX_RESPONSE_HEADER` on
    a client). ``max_frame`` bounds every frame sent or received. A client decodes an
    error with ``default_error`` when it carries no known kind.
    """

    __slots__ = (
        "_body_limit",
        "_calls",
        "_decoder",
        "_default_error",
        "_ended",
        "_eof",
        "_failure",
        "_header",
        "_header_limit",
        "_max_frame",
        "_partial",
        "role",
    )

    def __init__(
        self,
        role: Role,
        *,
        body_limit: BodyLimit,
        header_limit: int | None = None,
        max_frame: int = MAX_FRAME_CEILING,
        default_error: type[TaoError] = HostError,
    ) -> None:
        if not isinstance(role, Role):
            raise TypeError("role must be a Role")
        self.role = role
        self._decoder = FrameDecoder(max_frame=max_frame)  # validates max_frame
        self._max_frame = max_frame
        if header_limit is None:
            header_limit = MAX_REQUEST_HEADER if role is Role.SERVER else MAX_RESPONSE_HEADER
        self._header_limit = min(header_limit, max_frame)
        self._body_limit = body_limit
        self._default_error = default_error
        self._header: tuple[str, int, str | bytes | None] | None = None
        self._partial = 0  # bytes received of messages not yet returned
        self._eof = False
        self._failure: TaoError | None = None
        # A client's requests not yet answered: seq -> op.
        self._calls: dict[int, str] = {}
        # A server's request that a failure ended after its header was read: (op, seq).
        self._ended: tuple[str, int] | None = None

    @property
    def max_frame(self) -> int:
        """The largest frame sent or received."""
        return self._max_frame

    @property
    def in_message(self) -> bool:
        """True while part of a message has been received (its rest is awaited)."""
        return self._partial > 0 or self._header is not None

    @property
    def broken(self) -> bool:
        """True once the peer broke the protocol: every later event raises."""
        return self._failure is not None

    @property
    def awaiting(self) -> int:
        """On a client, how many requests sent have not been answered yet."""
        return len(self._calls)

    def wanted(self) -> int:
        """How many more bytes complete the frame in progress (at least 1)."""
        return self._decoder.wanted()

    # -- sending ------------------------------------------------------------------------

    def _frames(self, header: Any, body: bytes) -> list[bytes]:
        head = serialize(header)
        for frame in (head, body):
            if len(frame) > self._max_frame:
                raise ValueError(
                    f"a {len(frame)}-byte frame is over the {self._max_frame}-byte limit"
                )
        head = encode_frame(head)
        if len(body) > LARGE_FRAME:  # the driver writes the large body without copying it
            return [head + len(body).to_bytes(4, "big"), body]
        return [head + encode_frame(body)]

    @staticmethod
    def _check(op: str, seq: int) -> None:
        if not isinstance(op, str):
            raise TypeError("op must be a str")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= _UINT64_MAX:
            raise ValueError(f"seq must be a uint64, got {seq!r}")

    def request(self, op: str, seq: int, body: bytes) -> list[bytes]:
        """The bytes of a request (header and body frames), as chunks to write in order.

        From now on the machine awaits the answer to call ``seq`` under ``op`` (write
        the bytes, or give up on the connection). ValueError if call ``seq`` is still
        awaiting its answer.
        """
        if self.role is not Role.CLIENT:
            raise RuntimeError("only a client sends requests")
        self._check(op, seq)
        if seq in self._calls:
            raise ValueError(f"call {seq} is still awaiting its answer")
        chunks = self._frames(message_class("RPCHeader")(op=op, seq=seq), body)
        self._calls[seq] = op
        return chunks

    def response(
        self, op: str, seq: int, body: bytes = b"", *, error: TaoError | None = None
    ) -> list[bytes]:
        """The bytes of a response: ``body``, or ``error`` (encoded with its kind, and
        an empty body), as chunks to write in order."""
        if self.role is not Role.SERVER:
            raise RuntimeError("only a server sends responses")
        self._check(op, seq)
        header = message_class("RPCHeader")(op=op, seq=seq)
        if error is not None:
            header.error = encode_error(error)
            body = b""
        return self._frames(header, body)

    def answer_failure(self) -> list[bytes]:
        """The error response to the request the server's failure ended, as chunks to
        write before closing; ``[]`` when there is none to send.

        After :meth:`next_event` or :meth:`body_length` raised on a request whose header
        was read, the response names that request's op and seq and carries the failure
        with its kind (CodecError for a frame over its limit). There is none when the
        failure came before a header was read (no call to name), when the peer ended
        the stream (nobody reads it), or once it was taken. The stream cannot continue
        after it: close the connection.
        """
        if self.role is not Role.SERVER:
            raise RuntimeError("only a server answers a failed request")
        ended, failure = self._ended, self._failure
        self._ended = None
        if ended is None or failure is None or self._eof:
            return []
        op, seq = ended
        try:
            return self.response(op, seq, error=failure)
        except ValueError:  # a max_frame too small for the message: the bare kind
            try:
                return self.response(op, seq, error=type(failure)())
            except ValueError:
                return []

    # -- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("data received after the end of the stream")
        self._partial += len(data)
        self._decoder.feed(data)

    def next_event(self) -> Event:
        """The next whole message, :data:`NEED_DATA` or :data:`END_OF_STREAM`.

        CodecError or ProtocolError when the peer broke the protocol (then always).
        """
        self._raise_failure()
        try:
            return self._next()
        except (CodecError, ProtocolError) as exc:
            self._break(exc)
            raise

    def body_length(self) -> int | None:
        """The length the body in progress announces, once its header frame is decoded
        and its length is in (checked against the method's limit), else None.

        A driver can reserve memory for a large body before reading it.
        """
        self._raise_failure()
        if self._header is None:
            return None
        try:
            return self._decoder.peek_length(max_frame=self._limit(self._header[0]))
        except CodecError as exc:
            self._break(exc)
            raise

    def clear(self) -> None:
        """Drop everything held (the connection is done): its memory is freed at once."""
        self._decoder.clear()
        self._header = None
        self._partial = 0
        self._calls.clear()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            raise type(failure)(str(failure)) from failure

    def _break(self, exc: TaoError) -> None:
        self._failure = exc
        header = self._header
        if header is not None and self.role is Role.SERVER:
            self._ended = (header[0], header[1])  # the call this failure ends
        self.clear()

    def _limit(self, op: str) -> int:
        limit = self._body_limit
        if not isinstance(limit, int):
            limit = limit(op)
        return min(limit, self._max_frame)

    def _take(self, limit: int) -> bytes | None:
        frame = self._decoder.next_frame(max_frame=limit)
        if frame is not None:
            self._partial -= 4 + len(frame)
        return frame

    def _next(self) -> Event:
        if self._header is None:
            frame = self._take(self._header_limit)
            if frame is None:
                return self._starved()
            what = "request" if self.role is Role.SERVER else "response"
            header = parse("RPCHeader", frame, what=f"protorpc {what} header")
            error = header.error if header.HasField("error") else None
            op, seq = _header_op(header), int(header.seq)
            if self.role is Role.CLIENT:
                self._match(op, seq)  # before its body is read
            self._header = (op, seq, error)
        op, seq, error = self._header
        body = self._take(self._limit(op))
        if body is None:
            return self._starved()
        self._header = None
        if self.role is Role.SERVER:
            return Request(op, seq, body)
        del self._calls[seq]
        if error is not None:
            return Response(op, seq, b"", decode_error(error, default=self._default_error))
        return Response(op, seq, body, None)

    def _match(self, op: str, seq: int) -> None:
        """ProtocolError unless the response header ``op``/``seq`` answers a call awaited."""
        expected = self._calls.get(seq)
        if expected == op:
            return
        shown = _clip(op, 64)
        if expected is not None:
            raise ProtocolError(f"the peer answered call {seq} ({expected}) as {shown!r}")
        if len(self._calls) == 1:
            ((awaited, awaited_op),) = self._calls.items()
            raise ProtocolError(
                f"the peer answered call {awaited} ({awaited_op}) as call {seq} ({shown!r}), "
                "which nobody made"
            )
        raise ProtocolError(f"the peer answered call {seq} ({shown!r}), which nobody made")

    def _starved(self) -> Signal:
        if not self._eof:
            return NEED_DATA
        if not self.in_message and self._header is None:
            return END_OF_STREAM
        if self._header is not None and not self._partial:
            raise ProtocolError(
                f"the peer closed between the header and the body of {self._header[0]!r}"
            )
        received = self._decoder.buffered
        raise ProtocolError(
            f"the peer closed inside a frame: {received} of "
            f"{received + self._decoder.wanted()} bytes"
        )
