"""The taonet error hierarchy: one root, one branch per kind of failure.

Every error taonet raises on purpose is a :class:`TaoError`. Callers catch the
branch that matches what they can handle:

* :class:`CodecError`: bytes or text from outside could not be decoded.
* :class:`AuthenticationError`: a signature, attestation, certificate, expiry
  or revocation check failed.
* :class:`AuthorizationError`: a guard refused.
* :class:`HostError`: a Tao host could not seal, unseal or otherwise serve;
  :class:`NotSupportedError` when it does not offer what was asked (counters, say).
* :class:`ConfigError`: a domain or host configuration is unreadable or
  inconsistent (including a wrong keyset password).
* :class:`ProtocolError`: a peer broke a protocol.

Messages say what failed and what was expected; they never carry secrets.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "CodecError",
    "ConfigError",
    "HostError",
    "NotSupportedError",
    "ProtocolError",
    "TaoError",
]


class TaoError(Exception):
    """Root of every error taonet raises on purpose."""


class CodecError(TaoError, ValueError):
    """Bytes or text from outside could not be decoded."""


class AuthenticationError(TaoError):
    """A signature, attestation, certificate, validity window or revocation check failed."""


class AuthorizationError(TaoError):
    """A guard refused an operation."""


class HostError(TaoError):
    """A Tao host failed to serve a request (seal, unseal, TPM, ...)."""

    def __init__(self, message: str, *, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class NotSupportedError(HostError):
    """A Tao host does not offer the operation asked for (a host without counters, say)."""


class ConfigError(TaoError):
    """Configuration or key material on disk is unreadable or inconsistent."""


class ProtocolError(TaoError):
    """A peer broke a protocol."""
