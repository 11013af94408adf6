"""taonet: the CloudProxy Tao on Trio.

Programs prove to each other what code they are: a Tao host measures each
program it runs and names it; through its host a program attests, seals and
derives secrets; a domain, owned by a policy key, decides which programs are
trusted.

This top-level package imports no I/O framework: ``import taonet`` is cheap and
pulls in neither trio nor any host backend. See ``taonet.auth``,
``taonet.crypto``, ``taonet.attestation``, ``taonet.hosts`` and
``taonet.domain``.
"""

from __future__ import annotations

from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    ProtocolError,
    TaoError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "CodecError",
    "ConfigError",
    "HostError",
    "ProtocolError",
    "TaoError",
    "__version__",
]
