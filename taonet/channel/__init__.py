"""Tao channels: TLS 1.3 streams where both sides prove their principal names.

* :class:`ChannelIdentity`: a program's key, program certificate and the domain's
  policy certificate, with the TLS contexts built once from them.
* :func:`open_channel` / :func:`serve_channels` give :class:`TaoStream` objects
  (``trio.abc.Stream``) whose ``.peer`` is the verified :class:`Peer`;
  :func:`serve_channels` bounds handshakes, idle peers and connections held at once
  (in total and per address).
* :class:`CRLSource`: the domain's current verified CRL, enforced on channels given
  it as ``revocations=``: revoked or uncheckable peers are refused at handshake, and
  open channels closed (:class:`ChannelRevokedError`) when a newer CRL lists them.
* :class:`MessageStream`: 4-byte length-prefixed frames over any stream.
* Logging: :func:`serve_channels` binds ``conn_id``, ``remote`` and (once proved)
  ``peer`` to each connection's task, so every line it logs carries them;
  :func:`without_connection` lets that task write a line about others without them.
"""

from __future__ import annotations

from taonet._log import without_connection
from taonet._messages import MessageStream
from taonet.channel._identity import ChannelIdentity
from taonet.channel._revocation import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_JITTER,
    ChannelRevokedError,
    CRLSource,
)
from taonet.channel._server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
    HandshakeOutcome,
    default_max_connections,
    serve_channels,
)
from taonet.channel._stream import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    Peer,
    TaoStream,
    open_channel,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_ADDRESS",
    "DEFAULT_REFRESH_INTERVAL",
    "DEFAULT_REFRESH_JITTER",
    "CRLSource",
    "ChannelIdentity",
    "ChannelRevokedError",
    "HandshakeOutcome",
    "MessageStream",
    "Peer",
    "TaoStream",
    "default_max_connections",
    "open_channel",
    "serve_channels",
    "without_connection",
]

# What this package adds for revocation and handshake outcomes reports it as its home
# (reprs, tracebacks).
for _public in (CRLSource, ChannelRevokedError, HandshakeOutcome):
    _public.__module__ = __name__
del _public
