"""taonet: the CloudProxy Tao on Trio.

Programs prove to each other what code they are: a Tao host measures each
program it runs and names it; through its host a program attests, seals and
derives secrets; a domain, owned by a policy key, decides which programs are
trusted.

This top-level package imports no I/O framework: ``import taonet`` is cheap and
pulls in neither trio nor any host backend. See ``taonet.auth``,
``taonet.crypto``, ``taonet.attestation``, ``taonet.hosts`` and
``taonet.domain``; :mod:`taonet.files` has the atomic file writer that
key files and sealed blobs use.

:func:`configure_logging` is the one logging set-up that the ``taonet`` command, the
services and the examples share. The library itself only asks for loggers: importing
taonet configures no logging.
"""

from __future__ import annotations

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
from taonet._logging import configure_logging

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "CodecError",
    "ConfigError",
    "HostError",
    "NotSupportedError",
    "ProtocolError",
    "TaoError",
    "__version__",
    "configure_logging",
]

# What this namespace exports reports it as its home (tracebacks, reprs, docs say
# ``taonet.ConfigError``, not the private module that defines it).
for _public in (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    NotSupportedError,
    ProtocolError,
    TaoError,
    configure_logging,
):
    _public.__module__ = __name__
del _public
