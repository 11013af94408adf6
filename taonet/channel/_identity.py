"""Channel identities: a program's TLS credentials, and the TLS contexts built from them.

A :class:`ChannelIdentity` holds a program's key, its program certificate and the
domain's policy certificate. It checks them against each other once and builds each
of its ``ssl.SSLContext`` objects once (when credentials are provisioned, never per
connection):

* TLS 1.3 only; the policy certificate is the only trust root; the peer must present
  a certificate chaining to it (the server may accept clients without one when it
  asks for ``allow_anonymous``);
* hostname checking stays on against the fixed name every program certificate
  carries (:data:`taonet.certs.CHANNEL_HOSTNAME`): peers are told apart by the
  principal in their certificates, which the channel reads and checks after the
  handshake;
* the private key never reaches the disk in the clear: ``ssl`` loads keys only from
  files, so it gets the key encrypted under a one-time random password (see
  :func:`_load_chain`).

:meth:`ChannelIdentity.anonymous` is a client without a Tao: it authenticates the
server and presents nothing.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
import time
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization

from taonet import auth, certs
from taonet._errors import ConfigError
from taonet.crypto import Signer

__all__ = ["ChannelIdentity"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _pem_cert(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


class ChannelIdentity:
    """A program's credentials for Tao channels (see the module docstring)."""

    def __init__(
        self,
        policy_cert: bytes,
        *,
        signer: Signer | None = None,
        certificate: bytes | None = None,
        now_ns: int | None = None,
    ) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        self.anchor: Final = certs.PolicyAnchor(policy_cert, now_ns=now)
        self.signer: Final = signer
        self.certificate: certs.ProgramCertificate | None
        if (signer is None) != (certificate is None):
            raise ConfigError("a channel identity needs both a key and its certificate, or neither")
        if signer is not None and certificate is not None:
            program = certs.verify_program_certificate(self.anchor, certificate, now_ns=now)
            if program.public_key_der != signer.public_key_der():
                raise ConfigError("the program certificate certifies another key than this one")
            self.certificate = program
        else:
            self.certificate = None
        self._client_context = self._make_context(server=False)
        self._server_contexts: dict[bool, ssl.SSLContext] = {}

    @classmethod
    def anonymous(cls, policy_cert: bytes) -> ChannelIdentity:
        """A client identity with no certificate: it only authenticates servers."""
        return cls(policy_cert)

    @property
    def principal(self) -> auth.Prin | None:
        """The program's principal name (None for an anonymous identity)."""
        return self.certificate.principal if self.certificate is not None else None

    def client_context(self) -> ssl.SSLContext:
        return self._client_context

    def server_context(self, *, allow_anonymous: bool = False) -> ssl.SSLContext:
        if self.certificate is None:
            raise ConfigError("an anonymous identity cannot serve channels")
        ctx = self._server_contexts.get(allow_anonymous)
        if ctx is None:
            ctx = self._make_context(server=True, allow_anonymous=allow_anonymous)
            self._server_contexts[allow_anonymous] = ctx
        return ctx

    def _make_context(self, *, server: bool, allow_anonymous: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cadata=_pem_cert(self.anchor.der))
        ctx.verify_mode = ssl.CERT_OPTIONAL if (server and allow_anonymous) else ssl.CERT_REQUIRED
        # Session tickets would let a later connection skip the certificate exchange
        # that names the peer; every Tao channel handshake presents certificates.
        ctx.options |= ssl.OP_NO_TICKET
        if server:
            ctx.num_tickets = 0
        if self.signer is not None and self.certificate is not None:
            _load_chain(ctx, self.certificate.der, self.signer)
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert_der: bytes, signer: Signer) -> None:
    """Load the certificate and key into ``ctx`` without the key ever on disk in the clear.

    ``ssl`` only loads keys from files. The file here holds the certificate and the key
    encrypted (PKCS#8, PBES2 with AES-256) under a one-time random password that exists
    only in this process's memory and is dropped when this returns; the file lives in
    a private temporary directory (mode 0700, file 0600) removed at once. Whoever reads
    the disk (now, or later from freed blocks) finds only ciphertext under a 256-bit
    random password. (A memfd would keep even the ciphertext off the disk, but it is
    Linux-only; this works wherever ``ssl`` does.)
    """
    password = secrets.token_urlsafe(32).encode()  # 256 random bits, ASCII for OpenSSL
    key_pem = signer.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="taonet-tls-") as tmp:
        path = Path(tmp) / "chain.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_pem_cert(cert_der).encode() + key_pem)
        try:
            ctx.load_cert_chain(path, password=password)
        except ssl.SSLError as exc:
            raise ConfigError(f"TLS refused the program key or certificate: {exc}") from None
