"""Database URLs without their passwords, for messages and reports.

:func:`redact_url` is the one redaction of the storage layer's messages
(``taonet_services``) and the load test's (``taonet.loadtest._pgurl.redact``): the
password goes from a URL's authority (``user:***@``) and from every query parameter
libpq would read as ``password`` (percent-encoded too, ``%70assword=``); a libpq
``key=value`` text keeps no ``password=`` value. Pure and light: no imports beyond
the standard library.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and the report), at most 300 characters.

    The password goes from the authority (``user:***@``) and from every query parameter
    libpq would read as ``password`` (``%70assword=`` too); a text that is not a URL keeps
    no ``password=`` value."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return re.sub(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", r"\1***", url)[:300]
    authority, slash, tail = rest.partition("/")
    tail = "/" + tail if slash else ""
    authority, q, query = authority.partition("?")
    if q:
        tail = "?" + query + tail  # no path: the query follows the authority
    if "@" in authority:
        userinfo, hostports = authority.partition("@")[0], authority.rpartition("@")[2]
        if ":" in userinfo or authority.count("@") > 1:
            authority = f"{userinfo.partition(':')[0]}:***@{hostports}"
    path, q, query = tail.partition("?")
    if q:
        pieces = []
        for piece in query.split("&"):
            key = unquote(piece.partition("=")[0]).strip()
            pieces.append(f"{key}=***" if key.lower() == "password" else piece)
        path += "?" + "&".join(pieces)
    return f"{scheme}://{authority}{path}"[:300]
