"""The quote service: a TPM's EK certificate and quote key in, a quote-key certificate
out, wrapped so that only that TPM can open it.

``taonet quote-service --domain DIR --listen HOST:PORT`` runs :class:`QuoteService`.
It holds the policy key (unlocked with the operator's password at start-up), serves
Tao channels as ``<policy key>.QuoteService()`` to anonymous clients (a TPM host has
no certificate yet), and answers one ``QuoteService.CertifyQuoteKey`` request per
connection (:mod:`taonet.quoteservice`). Before it signs anything it checks, in
this order:

1. the EK certificate parses and chains to a manufacturer CA the domain lists
   (``manufacturer_cas.pem``, roots and intermediates, read only through the domain's
   signed configuration, which names its SHA-256 and whose serial must not be below
   the one recorded in ``policy_keys/config_serial``: a hand-edited list, or an older
   signed one put back with its ``domain.sig``, is refused and the service does not
   start. While it runs it watches the domain's files as the domain service does
   (:class:`taonet_services._domain_watch.DomainReloader`, looked at before each
   request): a newer signed configuration is put in force with its list, one that does
   not load or is older than the one in force (a rollback) is refused and the list in
   force kept),
   every certificate within its validity window, issuers CAs, the EK certificate's
   extended key usage tcg-kp-EKCertificate
   (:func:`taonet.attestation.tpm2_credential.check_ek_certificate`);
2. the EK public area sent is the certificate's key and matches a TCG EK template
   (L-1, L-2, H-3), which gives MakeCredential its nameAlg and symmetric key size;
3. the quote key's public area is a restricted signing key made in and bound to the
   TPM (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin, not decrypt),
   nameAlg SHA-256, ECC P-256/ECDSA-SHA256 or RSA-2048/RSASSA-SHA256;
4. the host name sent is ``tpm2([sha256 of that key's PKIX]).PCRs(...)`` and nothing
   more.

Then it issues the quote-key certificate (the domain's host-certificate profile for
signer type ``tpm2``: it passes ``PolicyAnchor.verify_host_certificate(cert,
host_key_der=<quote key PKIX>, signer_type="tpm2")``, random serial, the domain's host
validity), records it in the domain's audit log (``DIR/audit.sqlite``, the domain
service's, so ``taonet domain revoke`` reaches it too; committed before the answer
leaves; the ``attestation_sha256_hex`` of its row is the SHA-256 of the EK certificate,
which names the TPM), and answers with MakeCredential of a fresh 32-byte AES key for
that EK and the quote key's name, and the certificate sealed under that key. A refused
request is recorded (reason cut to a bound) and answered with ``refused`` or
``bad_request``; one that reaches a bug in the checks (an exception nobody planned
for) with ``internal_error``, counted and recorded the same way, its traceback logged
once per place in the code.

Bounds: a request body over :data:`taonet.quoteservice.MAX_REQUEST` is refused on the
length its frame announces, before it is read; a connection has
:data:`REQUEST_TIMEOUT` seconds from the handshake to a whole request (a client that
sends a byte now and then is cut off all the same); handshakes, idle peers, connections
in all and per address are bounded by :func:`taonet.channel.serve_channels` (at the
cap, the handshake or the handler waited on longest is evicted, so many slow clients
from many addresses hold the connections at most a request deadline each while others
still get in). A bad
connection is dropped and logged; the service keeps serving the others. Refusals come
from clients nobody authenticated, so they are rate limited per address as the domain
service's are (its :class:`~taonet_services.domain_service.RefusalLimits`): up to the
rate each is one audit row and one log line, beyond it they are counted into one
summary row per client and interval, and an address that used up its refusals is hung
up on unread until its bucket refills.

Issuances are limited too (:mod:`~taonet_services.quote_service._issuance`): the
service signs before the client has proved it holds the TPM, so a request that passed
every check also takes a token from its address's bucket (20 at once, then one every
30 s; 200 then one every 2 s from all addresses together) and from its EK
certificate's (4 at once, then one every 5 minutes), both of the refusal limiter's
shape; one that finds either empty is refused ``rate_limited`` (a refusal, limited as
such). An issuance's audit row says that the certificate is usable only by the TPM
that activates it. Whoever has a TPM's EK certificate can so delay that TPM's
certification by up to 5 minutes a try; the limits are arguments of
:meth:`QuoteService.open`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple, Self

import structlog
import trio
from cryptography import x509

from taonet import (
    AuthenticationError,
    CodecError,
    ConfigError,
    ProtocolError,
    auth,
    certs,
)
from taonet.attestation import tpm2_credential as tc
from taonet.attestation.tpm2 import host_name, host_pcrs
from taonet.channel import ChannelIdentity, TaoStream, serve_channels
from taonet.crypto import Signer
from taonet.domain import Domain
from taonet.quoteservice import (
    CREDENTIAL_BYTES,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_REFUSED,
    MAX_REQUEST,
    OP_CERTIFY_QUOTE_KEY,
    QuoteKeyReply,
    QuoteKeyRequest,
    QuoteServiceError,
    decode_request,
    encode_reply,
    manufacturer_cas,
    seal_certificate,
)
from taonet.wire import END_OF_STREAM, MAX_REQUEST_HEADER, NEED_DATA, Envelope, Request, Role
from taonet_services._domain_watch import RELOAD_INTERVAL, DomainReloader
from taonet_services.domain_service import AUDIT_FILE, AuditLog, RefusalLimits, bounded
from taonet_services.domain_service._limits import RefusalLimiter, RefusalSummary, client_key
from taonet_services.quote_service._issuance import (
    ADDRESS_ISSUANCE_LIMITS,
    EK_ISSUANCE_LIMITS,
    ISSUED_REASON,
    IssuanceLimiter,
)

__all__ = [
    "ADDRESS_ISSUANCE_LIMITS",
    "EK_ISSUANCE_LIMITS",
    "ERROR_RATE_LIMITED",
    "ISSUED_REASON",
    "REQUEST_TIMEOUT",
    "QuoteService",
]

log = structlog.get_logger(__name__)

#: The code of a request refused unread: its address used up its refusals for now.
ERROR_RATE_LIMITED: Final = "rate_limited"
#: Seconds from the handshake to a whole request.
REQUEST_TIMEOUT: Final = 20.0
_CHUNK: Final = 4096
#: Places (exception type, file, line) whose first internal failure logs a traceback.
_MAX_FAILURE_SITES: Final = 64
#: Longest traceback logged for an internal failure (characters).
_MAX_TRACEBACK_CHARS: Final = 8000


class _Issued(NamedTuple):
    """What the audit log records of an issued quote-key certificate."""

    serial: int
    principal: str
    key_hash_hex: str
    not_before_ns: int
    not_after_ns: int
    ek_sha256_hex: str


class _Refusal(Exception):
    def __init__(self, code: str, reason: str, digest: str | None, claimed: str | None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.digest, self.claimed = code, reason, digest, claimed


class QuoteService:
    """One domain's quote-key certifier (see the module docstring)."""

    def __init__(
        self,
        domain: Domain,
        policy_signer: Signer,
        *,
        audit: AuditLog,
        manufacturer_cas: Sequence[x509.Certificate],
        clock: Callable[[], int] = time.time_ns,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int | None = None,
        limits: RefusalLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        address_issuance_limits: RefusalLimits = ADDRESS_ISSUANCE_LIMITS,
        ek_issuance_limits: RefusalLimits = EK_ISSUANCE_LIMITS,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        """``manufacturer_cas``: the CA certificates EK certificates must chain to;
        ``clock`` (ns since the epoch) checks validity windows and dates certificates;
        ``limits`` (defaults if None) and ``monotonic`` drive the refusal limits, and
        ``address_issuance_limits`` and ``ek_issuance_limits`` the issuance limits
        (module docstring); ``reload_interval``: seconds between looks at the domain's
        files. The service owns ``audit`` and closes it in :meth:`close`."""
        self.domain = domain
        #: The CAs in force: those of the configuration in force (see :meth:`_adopt`).
        self.manufacturer_cas = tuple(manufacturer_cas)
        self.domain_watch: Final = DomainReloader(domain, self._adopt, interval=reload_interval)
        self._signer = policy_signer
        self._audit = audit
        self._clock = clock
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.limiter: Final = RefusalLimiter(limits, clock=monotonic)
        self.issuance: Final = IssuanceLimiter(
            address_issuance_limits, ek_issuance_limits, clock=monotonic
        )
        #: Where internal failures were seen (their traceback is logged once each).
        self._failures_seen: set[tuple[str, tuple[str, int | None] | None]] = set()
        self.principal: Final = domain.policy_principal.extend(auth.PrinExt("QuoteService", ()))
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

    @classmethod
    def open(
        cls,
        domain_dir: str | Path,
        password: bytes,
        *,
        clock: Callable[[], int] = time.time_ns,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int | None = None,
        limits: RefusalLimits | None = None,
        address_issuance_limits: RefusalLimits = ADDRESS_ISSUANCE_LIMITS,
        ek_issuance_limits: RefusalLimits = EK_ISSUANCE_LIMITS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> QuoteService:
        """Load the domain (its signed configuration verified and not rolled back) and
        its manufacturer CA list through it, unlock the policy key, open the audit log.
        ConfigError when the domain lists no manufacturer CA."""
        domain = Domain.load(domain_dir)
        signer = domain.unlock(password)
        cas = manufacturer_cas(domain)
        if not cas:
            raise ConfigError(
                f"the domain {domain.path} lists no TPM manufacturer CA; add one with "
                "`taonet domain policy --add-manufacturer-ca PEM`"
            )
        audit = AuditLog.open(Path(domain_dir) / AUDIT_FILE, signer=signer)
        try:
            return cls(
                domain,
                signer,
                audit=audit,
                manufacturer_cas=cas,
                clock=clock,
                request_timeout=request_timeout,
                max_connections=max_connections,
                limits=limits,
                address_issuance_limits=address_issuance_limits,
                ek_issuance_limits=ek_issuance_limits,
                monotonic=monotonic,
            )
        except BaseException:
            audit.close()
            raise

    def close(self) -> None:
        """Close the audit log (after :meth:`serve` returned). Closing twice is fine."""
        self._audit.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def serve(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (Trio's start protocol: ``task_status`` gets the listeners)."""
        log.info("quote_service_starting", principal=str(self.principal), port=port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._summarize_periodically)
                await nursery.start(self.domain_watch.run)
                listeners = await nursery.start(
                    functools.partial(
                        serve_channels,
                        self.handle,
                        port,
                        self.identity,
                        host=host,
                        allow_anonymous=True,
                        max_connections=self.max_connections,
                    )
                )
                task_status.started(listeners)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 10
                await self.write_refusal_summaries(all_now=True)

    def _adopt(self, domain: Domain) -> None:
        """Certify under ``domain``, a newer signed configuration of the same policy key
        (the reloader refused older ones and other keys), with the CA list it names."""
        try:
            cas = manufacturer_cas(domain)
        except ConfigError as exc:
            # Signed, but not a list of CAs: certify nothing until it is fixed.
            log.error("manufacturer_cas_refused", reason=bounded(str(exc)))  # noqa: TRY400
            cas = []
        self.domain, self.manufacturer_cas = domain, tuple(cas)
        log.info("manufacturer_cas_in_force", count=len(cas), serial=domain.config_serial)

    async def _summarize_periodically(self) -> None:
        while True:
            await trio.sleep(self.limiter.limits.summary_interval)
            await self.write_refusal_summaries()
            self.issuance.prune()

    async def write_refusal_summaries(self, *, all_now: bool = False) -> None:
        """Write the refusal summaries that are due (every pending one with ``all_now``)."""
        summaries = self.limiter.summaries(all_now=all_now)
        now_ns, now = self._clock(), self.limiter.clock()

        def write(summary: RefusalSummary) -> None:
            self._audit.record_refusal_summary(
                peer=summary.client,
                codes=summary.codes,
                first_ns=now_ns - max(0, int((now - summary.first) * 1e9)),
                last_ns=now_ns - max(0, int((now - summary.last) * 1e9)),
            )

        for summary in summaries:
            try:
                await trio.to_thread.run_sync(write, summary)
            except ConfigError as exc:
                log.error("audit_failed", reason=bounded(str(exc)))  # noqa: TRY400
            log.warning(
                "refusals_summarized", client=summary.client, count=summary.count,
                codes=dict(summary.codes),
            )  # fmt: skip

    # -- one connection ---------------------------------------------------------------

    async def handle(self, stream: TaoStream) -> None:
        """Read one request, answer it, close."""
        host, peer = _remote(stream)
        client, peer = client_key(host), bounded(peer, 256)
        if not self.limiter.admit(client, code=ERROR_RATE_LIMITED):
            # Used up its refusals: hung up on unread, counted for the summary.
            log.info("quote_client_rate_limited", client=client)
            await trio.lowlevel.checkpoint()
            return
        envelope = Envelope(Role.SERVER, body_limit=MAX_REQUEST, header_limit=MAX_REQUEST_HEADER)
        event: object = None
        failure: CodecError | ProtocolError | None = None
        try:
            with trio.move_on_after(self.request_timeout) as deadline:
                try:
                    while (event := envelope.next_event()) is NEED_DATA:
                        envelope.body_length()  # the announced length, before the body
                        wanted = min(_CHUNK, envelope.wanted())
                        envelope.receive_data(await stream.receive_some(wanted))
                except (CodecError, ProtocolError) as exc:
                    failure = exc
            if deadline.cancelled_caught:
                await trio.aclose_forcefully(stream)  # hang up first, then write it down
                await self._record_refusal(
                    client, peer, ERROR_BAD_REQUEST, "no whole request in time"
                )
                return
            if failure is not None:
                await self._record_refusal(client, peer, ERROR_BAD_REQUEST, bounded(str(failure)))
                await _send(stream, envelope.answer_failure())
                return
            if event is END_OF_STREAM:
                return
            assert isinstance(event, Request)
            if event.op != OP_CERTIFY_QUOTE_KEY:
                reason = f"unknown quote service method {bounded(event.op, 64)!r}"
                await self._record_refusal(client, peer, ERROR_BAD_REQUEST, reason)
                await _send(
                    stream, envelope.response(event.op, event.seq, error=ProtocolError(reason))
                )
                return
            answer = await self._answer(event.body, client, peer)
            await _send(stream, envelope.response(event.op, event.seq, encode_reply(answer)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("client_broken", error=bounded(str(exc) or type(exc).__name__))
        finally:
            envelope.clear()

    async def _answer(
        self, body: bytes, client: str, peer: str
    ) -> QuoteKeyReply | QuoteServiceError:
        await self.domain_watch.fresh()  # certify under the configuration on disk
        try:
            reply, issued = self.certify(body, client)
        except _Refusal as refusal:
            await self._record_refusal(
                client, peer, refusal.code, refusal.reason, refusal.digest, refusal.claimed
            )
            return QuoteServiceError(refusal.code, refusal.reason)
        try:
            await trio.to_thread.run_sync(
                lambda: self._audit.record_issued(
                    serial=issued.serial,
                    principal=issued.principal,
                    key_hash_hex=issued.key_hash_hex,
                    not_before_ns=issued.not_before_ns,
                    not_after_ns=issued.not_after_ns,
                    peer=peer,
                    attestation_sha256_hex=issued.ek_sha256_hex,
                    reason=ISSUED_REASON,
                )
            )
        except ConfigError as exc:
            log.error("audit_failed", reason=bounded(str(exc)))  # noqa: TRY400
            return QuoteServiceError(
                ERROR_INTERNAL, "the certificate could not be recorded; none was issued"
            )
        log.info("quote_key_certified", serial=issued.serial, principal=issued.principal)
        return reply

    async def _record_refusal(
        self,
        client: str,
        peer: str,
        code: str,
        reason: str,
        digest: str | None = None,
        claimed: str | None = None,
    ) -> None:
        """Record and log a refusal in full, or count it for a summary (module docstring)."""
        if not self.limiter.refused(client, code):
            await self.write_refusal_summaries()
            return
        reason = bounded(reason)
        log.warning("quote_key_refused", code=code, reason=reason)
        try:
            await trio.to_thread.run_sync(
                lambda: self._audit.record_refused(
                    principal=claimed,
                    reason_code=code,
                    reason=reason,
                    peer=peer,
                    attestation_sha256_hex=digest,
                )
            )
        except ConfigError as exc:
            log.error("audit_failed", reason=bounded(str(exc)))  # noqa: TRY400

    # -- the checks and the certificate (synchronous, no I/O) ------------------------

    def certify(self, body: bytes, client: str) -> tuple[QuoteKeyReply, _Issued]:
        """Check a request body (module docstring) from ``client`` (its address key)
        and issue its wrapped certificate, within the issuance limits.

        Returns the reply and the audit row's fields; raises ``_Refusal`` (with the
        code, reason, the EK certificate's SHA-256 and the name the host claimed)."""
        try:
            request = decode_request(body)
        except CodecError as exc:
            raise _Refusal(ERROR_BAD_REQUEST, str(exc), None, None) from None
        except Exception as exc:
            self._log_internal_failure(exc)
            reason = f"internal error ({type(exc).__name__}); the request was refused"
            raise _Refusal(ERROR_INTERNAL, reason, None, None) from None
        digest = hashlib.sha256(request.ek_certificate).hexdigest()
        claimed = bounded(str(request.host_name))
        try:
            return self._certify(request, digest, client)
        except _Refusal:
            raise
        except CodecError as exc:
            raise _Refusal(ERROR_BAD_REQUEST, str(exc), digest, claimed) from None
        except AuthenticationError as exc:
            raise _Refusal(ERROR_REFUSED, str(exc), digest, claimed) from None
        except Exception as exc:
            # A bug a request reaches (even a TaoError of another kind, or a library
            # error let through) is still a refusal: counted by the refusal limiter and
            # audited like any other, its traceback logged once per place.
            self._log_internal_failure(exc)
            reason = f"internal error ({type(exc).__name__}); the request was refused"
            raise _Refusal(ERROR_INTERNAL, reason, digest, claimed) from None

    def _log_internal_failure(self, exc: Exception) -> None:
        """Log ``exc``'s traceback (bounded) the first time it is seen at its place."""
        frames = traceback.extract_tb(exc.__traceback__)
        site = (type(exc).__name__, (frames[-1].filename, frames[-1].lineno) if frames else None)
        if site in self._failures_seen or len(self._failures_seen) >= _MAX_FAILURE_SITES:
            return
        self._failures_seen.add(site)
        text = "".join(traceback.format_exception(exc))
        log.error("internal_error", traceback=bounded(text, _MAX_TRACEBACK_CHARS))

    def _certify(
        self, request: QuoteKeyRequest, digest: str, client: str
    ) -> tuple[QuoteKeyReply, _Issued]:
        now = self._clock()
        ek_cert = tc.load_ek_certificate(request.ek_certificate)
        tc.check_ek_certificate(ek_cert, self.manufacturer_cas, now_ns=now)
        ek, _template = tc.check_ek_public(ek_cert, request.ek_public)
        quote_key = tc.parse_public(request.quote_key_public, what="quote key public area")
        tc.check_quote_key(quote_key)
        key_der = quote_key.public_key_der()
        pcrs = host_pcrs(request.host_name)
        if pcrs is None or len(request.host_name.ext) != 1:
            raise AuthenticationError("the host name is not of the form tpm2([...]).PCRs(...)")
        if request.host_name != host_name(key_der, pcrs):
            raise AuthenticationError("the host name is not the quote key's (another key hash)")
        # Only a request that passed every check spends the budgets: a bad request is a
        # refusal, limited as such.
        # Limited per EK key, not per certificate bytes: the same TPM's certificate
        # with its ECDSA signature's s replaced by n - s is another valid encoding.
        ek_key_digest = hashlib.sha256(certs.public_key_der(ek_cert)).hexdigest()
        limited = self.issuance.admit(client, ek_key_digest)
        if limited is not None:
            raise _Refusal(ERROR_RATE_LIMITED, limited, digest, bounded(str(request.host_name)))
        cert_der = certs.issue_host_certificate(
            self._signer,
            self.domain.policy_cert,
            key_der,
            now_ns=now,
            validity_days=self.domain.config.host_validity_days,
            signer_type="tpm2",
        )
        cert = x509.load_der_x509_certificate(cert_der)
        secret = os.urandom(CREDENTIAL_BYTES)
        name = quote_key.name
        blob, encrypted_secret = tc.make_credential(ek, secret, name)
        reply = QuoteKeyReply(blob, encrypted_secret, seal_certificate(secret, cert_der, name))
        principal = str(auth.principal_for_key("tpm2", key_der))
        issued = _Issued(
            serial=cert.serial_number,
            principal=principal,
            key_hash_hex=hashlib.sha256(key_der).hexdigest(),
            not_before_ns=int(cert.not_valid_before_utc.timestamp()) * 1_000_000_000,
            not_after_ns=int(cert.not_valid_after_utc.timestamp()) * 1_000_000_000,
            ek_sha256_hex=digest,
        )
        return reply, issued


async def _send(stream: TaoStream, chunks: list[bytes]) -> None:
    """Send an answer before hanging up, if the client still listens."""
    with trio.move_on_after(5):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"".join(chunks))


def _remote(stream: TaoStream) -> tuple[str, str]:
    """The client's host and its ``host:port`` (``"?"`` off an IP socket)."""
    transport = stream.tls_stream.transport
    if isinstance(transport, trio.SocketStream):
        try:
            name = transport.socket.getpeername()
        except OSError:
            return "?", "?"
        if isinstance(name, tuple) and len(name) >= 2:
            host = str(name[0])
            return host, f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return "?", "?"
