"""Base64 as people paste it: the binary form of a formula given on a command line.

The original Go code writes binary auth values with ``encoding/base64``'s
``URLEncoding`` (padded, e.g. the ``{...}`` bytes of the text form) and tools print
them with ``RawURLEncoding`` (unpadded, as ``taonet auth encode`` does); values that
passed through ``base64``/``openssl`` use the standard alphabet (``StdEncoding``).
:func:`decode_base64` reads each of these, padded or not, and refuses everything
else with :class:`taonet.CodecError`, the same on every Python version: padding of
the wrong length or inside the text, both alphabets mixed, a length no encoder
writes, characters outside the alphabet, and non-canonical trailing bits (Go's
``Strict`` decoding; so one value has exactly one spelling in each form).

It does not lean on :func:`base64.b64decode`'s handling of padding, which changed
between Python versions (3.13 refuses excess padding that 3.11 let through).
"""

from __future__ import annotations

import base64
import binascii
import string
from typing import Final

from taonet._errors import CodecError

__all__ = ["MAX_BASE64_CHARS", "decode_base64"]

#: Longest text :func:`decode_base64` reads (characters, before decoding). A formula's
#: text is bounded by ``MAX_TEXT_SIZE``; its binary form is smaller, so this is ample.
MAX_BASE64_CHARS: Final = 1 << 20

_COMMON: Final = frozenset(string.ascii_letters + string.digits)
_URL_ONLY: Final = frozenset("-_")
_STD_ONLY: Final = frozenset("+/")


def decode_base64(text: str) -> bytes:
    """The bytes ``text`` encodes in base64url or standard base64, padded or not.

    Whitespace around the value is ignored; anything else that is not exactly what an
    encoder writes raises :class:`taonet.CodecError` saying what is wrong.
    """
    if len(text) > MAX_BASE64_CHARS:
        raise CodecError(f"base64 text longer than {MAX_BASE64_CHARS} characters")
    value = text.strip()
    body = value.rstrip("=")
    padding = len(value) - len(body)
    chars = frozenset(body)
    url, std = bool(chars & _URL_ONLY), bool(chars & _STD_ONLY)
    if url and std:
        raise CodecError("not base64: mixes the base64url (-_) and standard (+/) alphabets")
    stray = chars - _COMMON - _URL_ONLY - _STD_ONLY
    if stray:
        shown = "'='" if "=" in stray else repr(min(stray))
        raise CodecError(f"not base64: unexpected character {shown}")
    if len(body) % 4 == 1:
        raise CodecError(f"not base64: {len(body)} characters is not a length base64 has")
    if padding and padding != -len(body) % 4:
        raise CodecError(
            f"not base64: {padding} padding character(s) after {len(body)} characters"
            f" (expected {-len(body) % 4})"
        )
    altchars = b"-_" if url else b"+/"
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the checks above rule this out
        raise CodecError("not base64") from None
    if base64.b64encode(data, altchars=altchars).decode().rstrip("=") != body:
        raise CodecError("not base64: non-zero bits after the last byte (not canonical)")
    return data
