"""Wire formats: frames and the protobuf messages shared with the original CloudProxy.

* Framing (``_framing``): 4-byte big-endian length prefixes, bounded before allocation.
* The protorpc envelope (``_envelope``): a sans-IO machine for the header and body
  frames, sequence numbers, end of stream and error kinds that every protocol shares.
* Schemas (``_schema``): the original's proto2 messages, built without protoc. The
  message classes are internal: public APIs take and return attrs values.
"""

from __future__ import annotations

from taonet.wire._envelope import (
    END_OF_STREAM,
    ERROR_KINDS,
    MAX_ERROR_MESSAGE,
    MAX_REQUEST_HEADER,
    MAX_RESPONSE_HEADER,
    NEED_DATA,
    Envelope,
    Request,
    Response,
    Role,
    Signal,
    decode_error,
    encode_error,
)
from taonet.wire._framing import (
    DEFAULT_MAX_FRAME,
    MAX_FRAME_CEILING,
    FrameDecoder,
    encode_frame,
)
from taonet.wire._schema import MAX_MESSAGE_BYTES, message_class, parse, serialize

__all__ = [
    "DEFAULT_MAX_FRAME",
    "END_OF_STREAM",
    "ERROR_KINDS",
    "MAX_ERROR_MESSAGE",
    "MAX_FRAME_CEILING",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_HEADER",
    "MAX_RESPONSE_HEADER",
    "NEED_DATA",
    "Envelope",
    "FrameDecoder",
    "Request",
    "Response",
    "Role",
    "Signal",
    "decode_error",
    "encode_error",
    "encode_frame",
    "message_class",
    "parse",
    "serialize",
]
