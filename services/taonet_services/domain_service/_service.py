"""The domain service: attestations in, program certificates out.

``taonet domain-service --domain DIR --listen HOST:PORT`` runs :class:`DomainService`.
It holds the policy key (unlocked with the operator's password at start-up) and:

* serves Tao channels as the principal ``<policy key>.DomainService()``, with a
  program certificate it issues itself at start-up; clients may be anonymous (they
  have no certificate yet);
* answers ``DomainService.Certify`` requests through :class:`taonet.domain.ProgramCertifier`
  (every attestation validated fully, the key matched, the guard asked),
  ``DomainService.GetCRL`` requests with a CRL signed by the policy key, and
  ``DomainService.WatchCRL`` long polls, answered as soon as that CRL is newer than
  the client's (bounded per address and in all: see ``_watch``);
* follows the domain's signed configuration while it runs
  (:class:`taonet_services._domain_watch.DomainReloader`, shared with the secret
  server): before each certification it stats ``domain.sig``, ``acls`` and
  ``domain.toml`` (and every second besides), and when they changed it loads the
  domain again, every signature checked, so a rule ``taonet domain policy`` retracts
  (``--remove-program``, ``--retract``) refuses the next certification, and one it
  adds allows it, without a restart. Files that do not load (half-written, edited by
  hand, tampered), a configuration of another policy key and a rollback to a lower
  serial open nothing: the guard in force is kept, and the refusal is logged
  (``domain_reload_refused``) and recorded in the audit log as a ``guard`` event once
  settled (files that fail for a second; then at most one a minute, counting the
  rest), as is each configuration put in force (``domain_reloaded``). The policy key
  itself and the service's own identity stay those it started with;
* records every issued certificate in full, durably (the row is committed
  before the certificate is sent; certificates issued while a commit is under way
  share the next one, see ``_IssuedBatcher``), and every refusal, in the
  append-only audit log (``DIR/audit.sqlite``), from which revocations
  (``taonet domain revoke``) are read;
* never un-revokes: every CRL it signs also lists each serial the domain's record
  (``policy_keys/crl_state``, see :func:`taonet.domain.sign_domain_crl`) holds, and
  is numbered past every earlier CRL whatever its clock says; and it refuses to
  start when the audit log lacks revocations that record or the signed ``crl.der``
  holds (an audit log restored from a backup), saying how to recover.

Metrics (``metrics``, a :class:`~taonet_services.metrics.ServiceMetrics`, or None):
each request answered (by operation, ``certify``, ``get_crl`` or ``watch_crl``, and
outcome: ``ok`` or its error code; a request cut off for a bad header or an unknown
method is not counted: there is no operation to name), its latency, open channels,
handshakes, and each issued certificate's audit write with its latency. Logs: every
line of a connection carries its ``conn_id``, ``remote`` (address) and ``peer`` (the
verified principal, or ``anonymous``), bound by :func:`~taonet.channel.serve_channels`;
the audit log's ``peer`` stays the address and the principal together.

The protocol is the protorpc envelope (:class:`taonet.wire.Envelope`): a request is
a header frame naming the method (``DomainService.Certify``,
``DomainService.GetCRL`` or ``DomainService.WatchCRL``) and a
``DomainServiceRequest`` body frame; the answer is a header and a
``DomainServiceResponse`` body. A refusal is a normal answer whose body
carries a typed ``error_code`` and a ``reason``, and the connection stays open for
the next request (but after ``rate_limited``). A request that breaks the protocol (a
body that does not decode, a body over its limit, an unknown method) gets an
envelope error of that kind (CodecError, ProtocolError) under its own op and seq,
is recorded as a ``bad_request`` refusal, and the connection is closed; so is one
whose header cannot be read or which is cut short, without an answer (there is no
call to name). A request that reaches a bug in answering it (any other exception)
is refused with ``internal_error`` like any refusal (rate limited, audited), its
traceback logged once per place in the code. The service keeps serving everyone else.
Each connection may carry several requests.

Connections are shared so that anonymous clients cannot keep revocations from
servers (:class:`ConnectionLimits`): a client that presents a program certificate of
this domain that is not revoked (a server's :class:`taonet.provision.RevocationWatcher`
once it has its identity) counts against its principal (32 connections, 4 watches),
wherever it connects from; anonymous clients together hold at most three quarters of
the connection cap (and 384 of the 512 watches), 16 connections from one address, each
closed after 16 requests or 60 s, and one address may ask for the CRL 10 times, then
once a second (``rate_limited`` beyond, and the connection closed). An anonymous
connection over its share is closed right after the handshake
(``connection_share_refused``, logged once per burst).

Refusals come from clients nobody has authenticated, so what they cost is bounded:

* a request body is at most :data:`MAX_REQUEST` bytes, checked on the length its
  frame announces (:meth:`~taonet.wire.Envelope.body_length`) before it is read or
  parsed (the largest real request, an attestation through
  the deepest delegation chain with 1024-byte names at every level, is about
  20 kB);
* every text field a refusal records or logs is cut to a bound with a marker and
  the SHA-256 of the whole value (:func:`~taonet_services.domain_service.bounded`);
* refusals are rate limited per client address (IPv4 address or IPv6 /64) and in
  all (:class:`RefusalLimits`): up to the rate each is one audit row and one log
  line; beyond it they are counted and written as one summary row (and log line)
  per client per interval, and a client that used up its refusals has its
  certify requests answered ``rate_limited`` unparsed, and is disconnected, until
  its bucket refills (it may still fetch the CRL). Issued certificates are never
  limited or summarized.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Self

import structlog
import trio

from taonet import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    ProtocolError,
    auth,
    certs,
)
from taonet.channel import (
    ChannelIdentity,
    HandshakeOutcome,
    TaoStream,
    default_max_connections,
    serve_channels,
    without_connection,
)
from taonet.crypto import Signer
from taonet.domain import Domain, ProgramCertifier, RevocationRecord, audit_behind, sign_domain_crl
from taonet.provision import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_INVALID_ATTESTATION,
    ERROR_UNAUTHORIZED,
    OP_CERTIFY,
    OP_GET_CRL,
    OP_WATCH_CRL,
)
from taonet.wire import (
    END_OF_STREAM,
    MAX_REQUEST_HEADER,
    NEED_DATA,
    Envelope,
    Request,
    Role,
    message_class,
    parse,
    serialize,
)
from taonet_services._domain_watch import RELOAD_INTERVAL, DomainReloader, ReloadReport
from taonet_services.domain_service._audit import (
    MAX_PEER_CHARS,
    AuditLog,
    IssuedCertificate,
    bounded,
)
from taonet_services.domain_service._limits import (
    ConnectionLimits,
    ConnectionShares,
    RefusalLimiter,
    RefusalLimits,
    RefusalSummary,
    client_key,
)
from taonet_services.domain_service._watch import CRLWatches, _Bursts
from taonet_services.metrics import ServiceMetrics

__all__ = ["AUDIT_FILE", "ERROR_RATE_LIMITED", "MAX_REQUEST", "DomainService"]

log = structlog.get_logger(__name__)

AUDIT_FILE: Final = "audit.sqlite"
#: Largest request (bytes), checked before it is read. The largest real one is about
#: 20 kB: an attestation through 8 delegations (MAX_DELEGATION_DEPTH) whose names
#: all use the 1024-byte cap of the Linux host, plus a host certificate; the rest
#: is room for a TPM quote and its longer keys and signatures.
MAX_REQUEST: Final = 24 * 1024
#: Bytes read from the client at a time (never past the frame in progress).
CHUNK_SIZE: Final = 16 * 1024
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT: Final = 30.0
#: The answer to a client that has used up its refusals (see the module docstring).
ERROR_RATE_LIMITED: Final = "rate_limited"
#: Places (exception type, file, line) whose first internal failure logs a traceback.
_MAX_FAILURE_SITES: Final = 64
#: Longest traceback logged for an internal failure (characters).
_MAX_TRACEBACK_CHARS: Final = 8000
#: How long writing the pending refusal summaries may hold up shutting down.
_SHUTDOWN_FLUSH_TIMEOUT: Final = 10.0


class DomainService:
    """One domain's certificate authority for programs (see the module docstring)."""

    def __init__(
        self,
        domain: Domain,
        policy_signer: Signer,
        *,
        audit: AuditLog,
        clock: Callable[[], int] = time.time_ns,
        limits: RefusalLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        connections: ConnectionLimits | None = None,
        max_connections: int | None = None,
        reload_interval: float = RELOAD_INTERVAL,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        """``clock`` (ns since the epoch) dates certificates; ``monotonic`` (seconds)
        drives the refusal limits (:class:`RefusalLimits`, defaults if None) and the
        connection shares (:class:`ConnectionLimits`) of the ``max_connections`` the
        channel server holds (None: :func:`taonet.channel.default_max_connections`).
        ``reload_interval`` (seconds) is how often the domain's files are looked at
        besides before each certification (module docstring). ``metrics``: where
        requests, channels, handshakes and audit writes are counted (module docstring).
        The service owns ``audit`` from here on and closes it in :meth:`close`.
        ConfigError if the audit log is behind the domain's revocations (module
        docstring)."""
        #: The domain's configuration in force (replaced when it is signed again).
        self.domain = domain
        #: Where requests, channels, handshakes and audit writes are counted (None: not).
        self.metrics = metrics
        self._signer = policy_signer
        self._audit = audit
        self._clock = clock
        self.limiter: Final = RefusalLimiter(limits, clock=monotonic)
        self.max_connections: Final = (
            max_connections if max_connections is not None else default_max_connections()
        )
        #: Who may hold connections (see :class:`ConnectionLimits`).
        self.shares: Final = ConnectionShares(self.max_connections, connections, clock=monotonic)
        self._monotonic = monotonic
        self._over_share = _Bursts("connection_share_refused")
        #: Where internal failures were seen (their traceback is logged once each).
        self._failures_seen: set[tuple[str, tuple[str, int | None] | None]] = set()
        self.certifier = ProgramCertifier(domain, policy_signer, clock=clock)
        self._issued: Final = _IssuedBatcher(audit)
        #: Follows the domain's signed configuration (module docstring); tests wait on
        #: its ``reports``.
        self.guard_watch: Final = DomainReloader(
            domain, self._adopt, interval=reload_interval, report=self._report_reload
        )
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
        # Never start on an audit log that forgot revocations (restored from a backup):
        # module docstring. Every CRL also lists what the domain's record holds.
        missing = audit_behind(domain.path, domain.policy_anchor, audit.revoked_serials())
        if missing:
            shown = ", ".join(str(s) for s in sorted(missing)[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConfigError(
                f"the audit log {audit.path} is behind this domain's revocations: serial(s)"
                f" {shown}{more} were revoked (policy_keys/crl_state, crl.der) but it does"
                " not record them (restored from a backup?); put back the newest audit log,"
                " or accept this one with `taonet domain crl --accept-audit-behind"
                f" --domain {domain.path}` (those serials stay revoked)"
            )
        self._record = RevocationRecord.load(domain.path)
        self._crl: tuple[frozenset[int], int, bytes] | None = None
        #: DomainService.WatchCRL: the long polls for a newer CRL (see ``_watch``).
        self.crl_watches: Final = CRLWatches(self.current_crl, domain.policy_anchor, clock=clock)

    @classmethod
    def open(
        cls,
        domain_dir: str | Path,
        password: bytes,
        *,
        limits: RefusalLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        connections: ConnectionLimits | None = None,
        max_connections: int | None = None,
        reload_interval: float = RELOAD_INTERVAL,
        metrics: ServiceMetrics | None = None,
    ) -> DomainService:
        """Load the domain, unlock its policy key and open its audit log.

        The service owns the log: :meth:`close` it (or use it as a context manager).
        ConfigError if the log is behind the domain's revocations (module docstring).
        """
        domain = Domain.load(domain_dir)
        signer = domain.unlock(password)
        # The policy key signs the audit chain's checkpoints (see _audit).
        audit = AuditLog.open(Path(domain_dir) / AUDIT_FILE, signer=signer)
        try:
            return cls(
                domain,
                signer,
                audit=audit,
                limits=limits,
                monotonic=monotonic,
                connections=connections,
                max_connections=max_connections,
                reload_interval=reload_interval,
                metrics=metrics,
            )
        except BaseException:
            audit.close()
            raise

    def close(self) -> None:
        """Close the audit log (after :meth:`serve` has returned). Closing twice is fine."""
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
        """Serve until cancelled (Trio's start protocol: ``task_status`` gets the listeners).

        Pending refusal summaries are written every ``summary_interval`` and when
        the service stops.
        """
        log.info("domain_service_starting", principal=str(self.principal), port=port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._summarize_periodically)
                nursery.start_soon(self.crl_watches.run)
                await nursery.start(self.guard_watch.run)
                listeners = await nursery.start(
                    functools.partial(
                        serve_channels,
                        self.handle,
                        port,
                        self.identity,
                        host=host,
                        allow_anonymous=True,
                        max_connections=self.max_connections,
                        on_handshake=self._handshake,
                    )
                )
                task_status.started(listeners)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _SHUTDOWN_FLUSH_TIMEOUT
                await self.write_refusal_summaries(all_now=True)

    def _handshake(self, outcome: HandshakeOutcome) -> None:
        if self.metrics is not None:
            self.metrics.handshake(outcome)

    def _observe(self, op: str, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.request_since(_OPERATIONS.get(op, "other"), outcome, started)

    async def handle(self, stream: TaoStream) -> None:
        """Answer requests on one connection until the client closes it (or, for an
        anonymous client, until its request count or lifetime runs out)."""
        with contextlib.nullcontext() if self.metrics is None else self.metrics.channel_open():
            await self._handle(stream)

    async def _handle(self, stream: TaoStream) -> None:
        envelope = Envelope(Role.SERVER, body_limit=MAX_REQUEST, header_limit=MAX_REQUEST_HEADER)
        host, address = _remote(stream)
        client = client_key(host)
        peer = address if stream.peer.principal is None else f"{address} {stream.peer}"
        peer = bounded(peer, MAX_PEER_CHARS)
        certificate = stream.peer.certificate
        revoked = self._crl[0] if self._crl is not None else frozenset()
        # A program certificate of this domain (checked in the handshake) that is not
        # revoked: its connections count against it, not against the anonymous share.
        certified = certificate is not None and certificate.serial not in revoked
        key = (
            hashlib.sha256(str(stream.peer.principal).encode()).hexdigest()[:32]
            if certified
            else client
        )
        if not self.shares.admit(key, certified=certified):
            self._over_share.note(
                peer=peer,
                certified=certified,
                held=self.shares.held(key, certified=certified),
                anonymous=self.shares.anonymous,
            )
            await trio.lowlevel.checkpoint()
            return
        limits = self.shares.limits
        opened = self._monotonic()
        served = 0
        try:
            while await self._serve_one(stream, envelope, client, peer, key, certified):
                served += 1
                if not certified and (
                    served >= limits.anonymous_requests
                    or self._monotonic() - opened >= limits.anonymous_lifetime
                ):
                    log.info("client_recycled", requests=served)
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("client_broken", error=bounded(str(exc) or type(exc).__name__))
        finally:
            self.shares.release(key, certified=certified)
            envelope.clear()

    async def _serve_one(
        self,
        stream: TaoStream,
        envelope: Envelope,
        client: str,
        peer: str,
        key: str,
        certified: bool,
    ) -> bool:
        """Read and answer one request; False when the connection is done."""
        failure: CodecError | ProtocolError | None = None
        event: object = None
        with trio.move_on_after(IDLE_TIMEOUT) as idle:
            try:
                while (event := envelope.next_event()) is NEED_DATA:
                    # The announced body length is checked before the body is read.
                    envelope.body_length()
                    wanted = min(CHUNK_SIZE, envelope.wanted())
                    envelope.receive_data(await stream.receive_some(wanted))
            except (CodecError, ProtocolError) as exc:
                failure = exc
        if failure is not None:
            # Bad bytes, a truncated message or one over the limit: a request whose
            # header was read hears it as an envelope error of that kind, under its op
            # and seq (the envelope decides; no header, no call to answer).
            await self._refused(client, peer, ERROR_BAD_REQUEST, bounded(str(failure)))
            await self._send(stream, envelope.answer_failure())
            return False
        if idle.cancelled_caught:
            log.info("client_idle")
            return False
        if event is END_OF_STREAM:
            return False
        assert isinstance(event, Request)
        op = event.op
        started = time.perf_counter()
        if op not in (OP_CERTIFY, OP_GET_CRL, OP_WATCH_CRL):
            reason = f"unknown domain service method {bounded(op, 64)!r}"
            await self._refused(client, peer, ERROR_BAD_REQUEST, reason)
            await self._send(stream, envelope.response(op, event.seq, error=ProtocolError(reason)))
            return False
        # Anonymous clients ask for the CRL only so often per address (module docstring).
        if op != OP_CERTIFY and not certified and not self.shares.crl_allowed(client):
            self._over_share.note(peer=peer, rate_limited=op)
            body = _error(ERROR_RATE_LIMITED, "too many CRL requests from this address")
            self._observe(op, ERROR_RATE_LIMITED, started)
            await self._send(stream, envelope.response(op, event.seq, serialize(body)))
            return False
        if op == OP_CERTIFY and not self.limiter.admit(client, code=ERROR_RATE_LIMITED):
            await self.write_refusal_summaries()
            body = _error(
                ERROR_RATE_LIMITED,
                "too many refused requests from this address; try again later",
            )
            self._observe(op, ERROR_RATE_LIMITED, started)
            await self._send(stream, envelope.response(op, event.seq, serialize(body)))
            return False
        try:
            request = parse("DomainServiceRequest", event.body, what=f"{op} request")
        except CodecError as exc:
            reason = bounded(str(exc))
            await self._refused(client, peer, ERROR_BAD_REQUEST, reason)
            self._observe(op, ERROR_BAD_REQUEST, started)
            await self._send(stream, envelope.response(op, event.seq, error=CodecError(reason)))
            return False
        try:
            response = await self._respond(op, request, peer, client, key, certified)
        except Exception as exc:  # any bug a request reaches is a refusal, rate limited
            response = await self._internal_failure(op, request, client, peer, exc)
        self._observe(op, str(response.error_code) or "ok", started)
        await stream.send_all(b"".join(envelope.response(op, event.seq, serialize(response))))
        return True

    async def _respond(
        self, op: str, request: Any, peer: str, client: str, watcher: str, certified: bool
    ) -> Any:
        if op == OP_GET_CRL:
            return message_class("DomainServiceResponse")(crl=await self.current_crl())
        if op == OP_WATCH_CRL:
            return await self.crl_watches.answer(request, watcher, certified=certified)
        if not (request.HasField("attestation") and request.HasField("program_key")):
            reason = f"incomplete {op} request"
            await self._refused(client, peer, ERROR_BAD_REQUEST, reason)
            return _error(ERROR_BAD_REQUEST, reason)
        attestation = bytes(request.attestation)
        key = bytes(request.program_key)
        digest = hashlib.sha256(attestation).hexdigest()
        # The guard of the configuration on disk now (a stat of three files when they
        # did not change): a rule retracted before this request is not honoured.
        await self.guard_watch.fresh()
        try:
            issued = self.certifier.certify(attestation, key)
        except (AuthenticationError, AuthorizationError) as exc:
            code = (
                ERROR_UNAUTHORIZED
                if isinstance(exc, AuthorizationError)
                else ERROR_INVALID_ATTESTATION
            )
            reason = str(exc)
            await self._refused(client, peer, code, reason, attestation, digest)
            return _error(code, reason)
        # Anything else (a certifier bug, even a TaoError) goes to _internal_failure.
        principal = str(issued.principal)  # once: for the audit row and the log line
        try:
            # Committed (WAL, synchronous=FULL) before the certificate leaves; the
            # certificates issued meanwhile share the commit (_IssuedBatcher). The
            # metric is the wait for that commit, as this request saw it.
            writing = time.perf_counter()
            await self._issued.record(
                IssuedCertificate(
                    serial=issued.serial,
                    principal=principal,
                    key_hash_hex=hashlib.sha256(key).hexdigest(),
                    not_before_ns=issued.not_before,
                    not_after_ns=issued.not_after,
                    peer=peer,
                    attestation_sha256_hex=digest,
                )
            )
            if self.metrics is not None:
                self.metrics.audit_written(time.perf_counter() - writing)
        except ConfigError as exc:
            log.error(  # noqa: TRY400 - one line: the reason says what failed
                "audit_failed", serial=issued.serial, reason=bounded(str(exc))
            )
            return _error(ERROR_INTERNAL, "the certificate could not be recorded; none was issued")
        log.info(
            "cert_issued",
            serial=issued.serial,
            principal=bounded(principal),
        )
        return message_class("DomainServiceResponse")(
            certificate=issued.der, chain=[self.domain.policy_cert]
        )

    async def _internal_failure(
        self, op: str, request: Any, client: str, peer: str, exc: Exception
    ) -> Any:
        """A request met a bug (not a TaoError): answer it as a refusal of kind
        ``internal_error``, counted by the refusal limiter and audited like any other,
        so a request that keeps reaching it is rate limited. The traceback is logged
        the first time a failure is seen at a given place (bounded), not per request."""
        frames = traceback.extract_tb(exc.__traceback__)
        site = (type(exc).__name__, (frames[-1].filename, frames[-1].lineno) if frames else None)
        if site not in self._failures_seen and len(self._failures_seen) < _MAX_FAILURE_SITES:
            self._failures_seen.add(site)
            text = "".join(traceback.format_exception(exc))
            log.error("internal_error", op=op, traceback=bounded(text, _MAX_TRACEBACK_CHARS))
        reason = f"internal error ({type(exc).__name__}); the request was refused"
        attestation = digest = None
        if op == OP_CERTIFY and request.HasField("attestation"):
            attestation = bytes(request.attestation)
            digest = hashlib.sha256(attestation).hexdigest()
        await self._refused(client, peer, ERROR_INTERNAL, reason, attestation, digest)
        return _error(ERROR_INTERNAL, reason)

    def _adopt(self, domain: Domain) -> None:
        """Certify under ``domain``, a newer signed configuration of the same policy key."""
        self.certifier = ProgramCertifier(domain, self._signer, clock=self._clock)
        self.domain = domain

    async def _report_reload(self, report: ReloadReport) -> None:
        """Record in the audit log what a look at the domain's files did (module docstring)."""
        if report.outcome == "reloaded":
            reason = f"configuration serial {report.serial} in force"
        elif report.outcome == "unchanged":
            reason = f"the files are back to configuration serial {report.serial}"
        else:
            reason = f"{report.error}; configuration serial {report.serial} stays in force"
        guard = str(self.domain.guard.subprincipal())
        try:
            await trio.to_thread.run_sync(
                lambda: self._audit.record_guard(
                    outcome=report.outcome,
                    config_serial=report.serial,
                    guard=guard,
                    reason=reason,
                    count=report.events,
                )
            )
        except ConfigError as exc:
            log.error("audit_failed", reason=bounded(str(exc)))  # noqa: TRY400

    async def _refused(
        self,
        client: str,
        peer: str,
        code: str,
        reason: str,
        attestation: bytes | None = None,
        digest: str | None = None,
    ) -> None:
        """Record and log a refusal in full, or count it for a summary (module docstring)."""
        if self.limiter.refused(client, code):
            principal = None if attestation is None else _claimed_speaker(attestation)
            reason = bounded(reason)
            try:
                await trio.to_thread.run_sync(
                    lambda: self._audit.record_refused(
                        principal=principal,
                        reason_code=code,
                        reason=reason,
                        peer=peer,
                        attestation_sha256_hex=digest,
                    )
                )
            except ConfigError as exc:
                log.error("audit_failed", reason=bounded(str(exc)))  # noqa: TRY400
            log.warning(
                "bad_request" if code == ERROR_BAD_REQUEST else "cert_refused",
                code=code,
                principal=None if principal is None else bounded(principal),
                reason=reason,
            )
        await self.write_refusal_summaries()

    async def write_refusal_summaries(self, *, all_now: bool = False) -> None:
        """Write the refusal summaries that are due (all pending ones with ``all_now``).

        The lines are about every client, so they go out without the context of the
        connection whose request found them due (each names its ``client``)."""
        with without_connection():
            await self._write_refusal_summaries(all_now=all_now)

    async def _write_refusal_summaries(self, *, all_now: bool) -> None:
        summaries = self.limiter.summaries(all_now=all_now)
        if not summaries:
            return
        now_ns, now = self._clock(), self.limiter.clock()

        def wall(t: float) -> int:
            return now_ns - max(0, int((now - t) * 1e9))

        def write(summary: RefusalSummary) -> None:
            self._audit.record_refusal_summary(
                peer=summary.client,
                codes=summary.codes,
                first_ns=wall(summary.first),
                last_ns=wall(summary.last),
            )

        for summary in summaries:
            try:
                await trio.to_thread.run_sync(write, summary)
            except ConfigError as exc:
                log.error(  # noqa: TRY400
                    "audit_failed", client=summary.client, reason=bounded(str(exc))
                )
            log.warning(
                "refusals_summarized",
                client=summary.client,
                count=summary.count,
                codes=dict(summary.codes),
            )

    async def _summarize_periodically(self) -> None:
        while True:
            await trio.sleep(self.limiter.limits.summary_interval)
            await self.write_refusal_summaries()

    async def current_crl(self) -> bytes:
        """The CRL for the revocations in the audit log and in the domain's record
        (``policy_keys/crl_state``), re-signed when they change and hourly; each one
        numbered past every CRL the domain signed before (:func:`~taonet.domain.sign_domain_crl`).
        """
        revoked = await trio.to_thread.run_sync(self._audit.revoked_serials)
        revoked |= self._record.revoked
        now = self._clock()
        if self._crl is not None:
            serials, made_at, der = self._crl
            if serials == revoked and 0 <= now - made_at < 3600 * 10**9:
                return der
        dated = dict.fromkeys(revoked, now)
        der, record = await trio.to_thread.run_sync(
            lambda: sign_domain_crl(
                self.domain.path, self._signer, self.domain.policy_anchor, dated, now_ns=now
            )
        )
        self._record = record
        self._crl = (record.revoked, now, der)
        return der

    @staticmethod
    async def _send(stream: TaoStream, chunks: list[bytes]) -> None:
        """Send a last answer before hanging up, if the client still listens."""
        with trio.move_on_after(5):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(b"".join(chunks))


class _IssuedBatcher:
    """Records issued certificates, those that arrive while a commit is under way
    together in the next one: each caller returns once its own row is committed.

    No task of its own: the first caller to find no commit under way writes the
    batch (shielded, so a cancelled caller does not leave its batch half done); the
    others wait for it, and one of them writes what came in meanwhile. A caller
    cancelled before its row went into a commit takes it back out. Nothing is
    returned that is not recorded; the other way round is allowed (the safe side): a
    row already in a commit stays recorded though its caller was cancelled, or its
    client left, before the certificate went out.
    """

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self._pending: list[_Pending] = []
        self._writing = False
        self._written = trio.Event()

    async def record(self, certificate: IssuedCertificate) -> None:
        """Return once ``certificate`` is committed; ConfigError if it was not."""
        item = _Pending(certificate)
        self._pending.append(item)
        try:
            while not item.done:
                if self._writing:
                    await self._written.wait()
                else:
                    await self._write_pending()
        except BaseException:
            if not item.done and item in self._pending:
                self._pending.remove(item)
            raise
        if isinstance(item.result, ConfigError):
            raise item.result

    async def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        self._writing = True
        unfinished = ConfigError("the audit log write did not finish; nothing was recorded")
        results: list[int | ConfigError] = [unfinished] * len(batch)
        try:
            with trio.CancelScope(shield=True):
                try:
                    results = await trio.to_thread.run_sync(
                        self._audit.record_issued_many, [item.certificate for item in batch]
                    )
                except ConfigError as exc:
                    results = [exc] * len(batch)
        finally:
            for item, result in zip(batch, results, strict=True):
                item.result = result
                item.done = True
            self._writing = False
            self._written.set()
            self._written = trio.Event()


class _Pending:
    __slots__ = ("certificate", "done", "result")

    def __init__(self, certificate: IssuedCertificate) -> None:
        self.certificate = certificate
        self.done = False
        self.result: int | ConfigError = 0


#: The metrics' name of each operation.
_OPERATIONS: Final = {OP_CERTIFY: "certify", OP_GET_CRL: "get_crl", OP_WATCH_CRL: "watch_crl"}


def _error(code: str, reason: str) -> Any:
    return message_class("DomainServiceResponse")(error_code=code, reason=reason[:1000])


def _remote(stream: TaoStream) -> tuple[str, str]:
    """The client's host and its ``host:port`` (``"?"`` off an IP socket)."""
    transport = stream.tls_stream.transport
    if isinstance(transport, trio.SocketStream):
        try:
            sockname = transport.socket.getpeername()
        except OSError:
            return "?", "?"
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            host, port = str(sockname[0]), sockname[1]
            return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "?", "?"


def _claimed_speaker(attestation: bytes) -> str | None:
    """The speaker an attestation claims (unverified: for the audit log only)."""
    from taonet.attestation import Attestation

    try:
        return str(Attestation.from_bytes(attestation).statement().speaker)
    except CodecError:
        return None
