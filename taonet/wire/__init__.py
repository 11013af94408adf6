"""Wire formats: frames and the protobuf messages shared with the original CloudProxy.

* Framing (``_framing``): 4-byte big-endian length prefixes, bounded before allocation.
* Schemas (``_schema``): the original's proto2 messages, built without protoc. The
  message classes are internal: public APIs take and return attrs values.
"""

from __future__ import annotations

from taonet.wire._framing import (
    DEFAULT_MAX_FRAME,
    MAX_FRAME_CEILING,
    FrameDecoder,
    encode_frame,
)
from taonet.wire._schema import MAX_MESSAGE_BYTES, message_class, parse, serialize

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_FRAME_CEILING",
    "MAX_MESSAGE_BYTES",
    "FrameDecoder",
    "encode_frame",
    "message_class",
    "parse",
    "serialize",
]
