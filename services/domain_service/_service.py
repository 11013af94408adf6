"""The domain service: attestations in, program certificates out.

``taonet domain-service --domain DIR --listen HOST:PORT`` runs :class:`DomainService`.
It holds the policy key (unlocked with the operator's password at start-up) and:

* serves Tao channels as the principal ``<policy key>.DomainService()``, with a
  program certificate it issues itself at start-up; clients may be anonymous (they
  have no certificate yet);
* answers ``certify`` requests through :class:`taonet.domain.ProgramCertifier`
  (every attestation validated fully, the key matched, the guard asked) and
  ``crl`` requests with a CRL signed by the policy key;
* records every issued certificate and every refusal in the append-only audit log
  (``DIR/audit.sqlite``), from which revocations (``taonet domain revoke``) are read.

Each connection may carry several requests; a malformed one gets a ``bad_request``
answer and the connection is closed, and the service keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from services.domain_service._audit import AuditLog
from taonet import auth, certs
from taonet._errors import AuthenticationError, AuthorizationError, CodecError, TaoError
from taonet.channel import ChannelIdentity, MessageStream, TaoStream, serve_channels
from taonet.crypto import Signer
from taonet.domain import Domain, ProgramCertifier
from taonet.provision import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_INVALID_ATTESTATION,
    ERROR_UNAUTHORIZED,
)
from taonet.wire import message_class

__all__ = ["AUDIT_FILE", "DomainService"]

log = structlog.get_logger(__name__)

AUDIT_FILE: Final = "audit.sqlite"
MAX_REQUEST: Final = 256 * 1024
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT: Final = 30.0


class DomainService:
    """One domain's certificate authority for programs (see the module docstring)."""

    def __init__(
        self,
        domain: Domain,
        policy_signer: Signer,
        *,
        audit: AuditLog,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.domain: Final = domain
        self._signer = policy_signer
        self._audit = audit
        self._clock = clock
        self.certifier: Final = ProgramCertifier(domain, policy_signer, clock=clock)
        self.principal: Final = domain.policy_principal.extend(auth.PrinExt("DomainService", ()))
        key = Signer.generate()
        issued = certs.issue_program_certificate(
            policy_signer,
            domain.policy_anchor,
            key.public_key_der(),
            self.principal,
            now_ns=clock(),
            validity_days=domain.config.program_validity_days,
            domain_name=domain.config.name,
        )
        self.identity: Final = ChannelIdentity(
            domain.policy_cert, signer=key, certificate=issued.der, now_ns=clock()
        )
        self._crl: tuple[frozenset[int], int, bytes] | None = None

    @classmethod
    def open(cls, domain_dir: str | Path, password: bytes) -> DomainService:
        """Load the domain, unlock its policy key and open its audit log."""
        domain = Domain.load(domain_dir)
        signer = domain.unlock(password)
        return cls(domain, signer, audit=AuditLog.open(Path(domain_dir) / AUDIT_FILE))

    async def serve(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (Trio's start protocol: ``task_status`` gets the listeners)."""
        log.info("domain_service_starting", principal=str(self.principal), port=port)
        await serve_channels(
            self.handle,
            port,
            self.identity,
            host=host,
            allow_anonymous=True,
            task_status=task_status,
        )

    async def handle(self, stream: TaoStream) -> None:
        """Answer requests on one connection until the client closes it."""
        messages = MessageStream(stream, max_frame=MAX_REQUEST)
        peer = str(stream.peer)
        while True:
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                try:
                    request = await messages.receive_proto("DomainServiceRequest")
                except trio.EndOfChannel:
                    return
                except (CodecError, TaoError) as exc:
                    await self._answer(messages, error=(ERROR_BAD_REQUEST, str(exc)))
                    log.info("bad_request", peer=peer, reason=str(exc))
                    return
            if idle.cancelled_caught:
                log.info("client_idle", peer=peer)
                return
            response = await self._respond(request, peer)
            await messages.send_proto(response)

    async def _respond(self, request: Any, peer: str) -> Any:
        kind = str(request.kind)
        if kind == "crl":
            return message_class("DomainServiceResponse")(crl=await self.current_crl())
        if kind != "certify" or not (
            request.HasField("attestation") and request.HasField("program_key")
        ):
            return _error(ERROR_BAD_REQUEST, f"unknown or incomplete request {kind!r}")
        attestation = bytes(request.attestation)
        key = bytes(request.program_key)
        digest = hashlib.sha256(attestation).hexdigest()
        try:
            issued = self.certifier.certify(attestation, key)
        except (AuthenticationError, AuthorizationError) as exc:
            code = (
                ERROR_UNAUTHORIZED
                if isinstance(exc, AuthorizationError)
                else ERROR_INVALID_ATTESTATION
            )
            principal, reason = _claimed_speaker(attestation), str(exc)
            await trio.to_thread.run_sync(
                lambda: self._audit.record_refused(
                    principal=principal,
                    reason_code=code,
                    reason=reason,
                    peer=peer,
                    attestation_sha256_hex=digest,
                )
            )
            log.warning("cert_refused", peer=peer, code=code, reason=reason)
            return _error(code, reason)
        except TaoError as exc:  # pragma: no cover - a certifier bug, not the client's
            log.exception("cert_failed", peer=peer)
            return _error(ERROR_INTERNAL, type(exc).__name__)
        await trio.to_thread.run_sync(
            lambda: self._audit.record_issued(
                serial=issued.serial,
                principal=str(issued.principal),
                key_hash_hex=hashlib.sha256(key).hexdigest(),
                not_before_ns=issued.not_before,
                not_after_ns=issued.not_after,
                peer=peer,
                attestation_sha256_hex=digest,
            )
        )
        log.info("cert_issued", peer=peer, serial=issued.serial, principal=str(issued.principal))
        return message_class("DomainServiceResponse")(
            certificate=issued.der, chain=[self.domain.policy_cert]
        )

    async def current_crl(self) -> bytes:
        """The CRL for the revocations in the audit log (re-signed when they change)."""
        revoked = await trio.to_thread.run_sync(self._audit.revoked_serials)
        now = self._clock()
        if self._crl is not None:
            serials, made_at, der = self._crl
            if serials == revoked and now - made_at < 3600 * 10**9:
                return der
        der = certs.make_crl(
            self._signer,
            self.domain.policy_anchor,
            revoked,
            now_ns=now,
        )
        self._crl = (revoked, now, der)
        return der

    async def _answer(self, messages: MessageStream, *, error: tuple[str, str]) -> None:
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await messages.send_proto(_error(*error))


def _error(code: str, reason: str) -> Any:
    return message_class("DomainServiceResponse")(error_code=code, reason=reason[:1000])


def _claimed_speaker(attestation: bytes) -> str | None:
    """The speaker an attestation claims (unverified: for the audit log only)."""
    from taonet.attestation import Attestation

    try:
        return str(Attestation.from_bytes(attestation).statement().speaker)
    except CodecError:
        return None
