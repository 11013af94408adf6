"""Wire formats: the protobuf messages shared with the original CloudProxy.

Internal to taonet (no public types here are generated classes); see
``taonet.wire._schema`` for the schemas. Framing for streams comes with the
channel layer.
"""

from __future__ import annotations

from taonet.wire._schema import MAX_MESSAGE_BYTES, message_class, parse, serialize

__all__ = ["MAX_MESSAGE_BYTES", "message_class", "parse", "serialize"]
