"""The secret server: the secret service protocol over Tao channels, authorized by the guard.

Each connection is a Tao channel from a program of the domain (its verified principal
is the caller). Requests are protorpc envelopes (:mod:`taonet.secrets`); several may
be in flight on one channel (up to :data:`MAX_IN_FLIGHT`; the server stops reading
the channel while that many are being answered), each answered under its own seq.

Authorization. Every request is checked by the domain's guard for the caller:
``Authorized(P, OP, "/name")`` with OP ``Read`` (Read), ``Write`` (Write), ``Create``
(Create; plus ``Read`` on the protector when one is named), ``Delete`` (Delete) or
``Own`` (Rotate). A right on a name prefix covers the names under it, segment by
segment: the guard is asked for the name itself, then each ancestor, up to ``"/"``
(for ``/a/b/c``: ``/a/b/c``, ``/a/b``, ``/a``, ``/``), and the first yes allows; so
a right on ``/a`` covers ``/a/b`` but not ``/ab``. Rotate needs Own, not Write: a
rotation makes a new epoch that every reader of the name moves to, retires the
epoch others may still hold, and rewraps every object under the key; that is the
owner's decision, not a writer's. List returns only the names under the prefix the
caller may Read (by the same rule); a caller no rule or grant could give Read on the
prefix, above it or under it is refused before any scan (``may_reach``, ``_reach``;
such refusals, which any program can repeat for free, are audited a few times per
principal, then summarized). With Read on the prefix itself (or above) that is
every name under it, a page at a time. Without it, the names are filtered one by one
and a request scans at most
:data:`~taonet_services.secret_server._store.MAX_LIST_SCAN` names: a page may come
back short, and ``next_after`` is always a name returned (never one the caller may
not read, which would tell it the name); a scan that finds no readable name in that
many answers ``invalid`` (list a narrower prefix, or one the caller may read).

Directives. A Read that carries a disclosure directive (:mod:`taonet.disclosure`) is
decided by it instead of the guard's Read: it must name its epoch, come on the
caller's own channel (not with an operator credential), verify against the domain
(the policy certificate of the server's identity; a program signer's certificate not
revoked by the server's CRL; its window), grant the channel's verified peer Read on
exactly that (name, epoch), and be signed by the policy key or by a program that
holds Own on the name (guard or grants). A refusal is audited like the guard's; a
release's entry names the directive (``directive``: its ``directive_digest``, of its
signed statement and signer, which other bytes of the same grant keep) and its
``delegator``.

Audit (an :class:`~taonet_services.storage.AuditStore` in the same database): every
change is appended in the same transaction as the change (so it commits with it);
every release (a Read answered with a value, with the tag of the row it came from,
its protector's id and ``read_after``, the audit chain's head seq in the read's
snapshot, so every change recorded up to it was visible to the read) is appended and committed
before the value is sent (releases from concurrent calls are committed together, one
transaction per batch); every refusal by the guard is appended. A release that
cannot be audited is not made (``unavailable``).

Reads. A Read on SQLite is answered from the :class:`~taonet_services.secret_server.
_cache.ObjectCache` when the object was verified since the tables last changed (by
anyone: see that module), else from the database in one read-only snapshot, every
row of the chain checked (MAC, manifest tag, AES-GCM); either way the release is
audited before the value leaves. The guard's yes for an (op, name) is remembered for
the rest of the channel while that guard is the server's (a guard is immutable; a
re-signed domain puts another in its place, see ``_domain_watch``, and every
decision is asked again; ``also_authorized`` is asked every time).

Hooks: ``on_change(ObjectId, kind)`` is called after each committed create, write,
rotate (the new id) and delete (kind ``"created"``, ``"written"``, ``"rotated"``,
``"deleted"``), and ``change_in(cursor, ObjectId, kind)`` inside its transaction
(what it writes commits or rolls back with the change); ``also_authorized(principal,
op, name)`` is asked when the guard says no (grants kept by an extension);
``release_master(call, request)`` answers a Read of the master key's name (replica
key transfer; without it that name is reserved like the rest of
:data:`~taonet_services.secret_server._store.RESERVED_PREFIX`);
``authenticate_operator(request)`` decides for requests that carry an operator
credential (it returns the principal to authorize as, or raises
AuthenticationError); a server given one also accepts channels from clients without
a program certificate (an operator's tool), whose every request must then carry a
credential; those anonymous channels are a small pool apart, served one request at a
time, closed after a refusal, their refusals audited a few per address and then
summarized (``_anonymous``); ``extensions`` serve further operations (Watch, Grant);
``info`` is the answer to Info (the store id), given to anyone on a channel, with or
without a certificate, before any other check (no right, nothing audited).

Metrics (``metrics``, a :class:`~taonet_services.metrics.ServiceMetrics`, or None):
each request answered (by operation and outcome: ``ok``, the error code, or
``bad_request``) with its latency, open channels, handshakes, and each batch of
audit entries committed (releases, refusals) with its latency; a change's audit entry
is written in the change's own transaction and counted in the request's latency. The
attribute may be set or cleared while the server runs. Logs: every line of a channel
carries its ``conn_id`` and ``peer`` (bound by :func:`~taonet.channel.serve_channels`).

Failures: bad bytes get an envelope error or an ``invalid`` answer and the server
keeps serving (a frame over its limit ends that connection only); a database that is
full, read-only or unreachable answers ``unavailable`` and nothing is acknowledged
that was not committed; a row that fails its integrity check answers ``corrupt``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import structlog
import trio

from taonet import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ProtocolError,
    TaoError,
    auth,
)
from taonet.audit import MAX_ACTOR_CHARS, bounded
from taonet.channel import (
    ChannelIdentity,
    CRLSource,
    HandshakeOutcome,
    TaoStream,
    serve_channels,
)
from taonet.disclosure import DirectiveOp, directive_digest, verify_directive
from taonet.domain import Guard
from taonet.protected import ObjectId
from taonet.secrets import (
    Changed,
    CorruptError,
    CreateRequest,
    Deleted,
    DeleteRequest,
    ErrorCode,
    Failure,
    InfoRequest,
    Listing,
    ListRequest,
    Op,
    ReadRequest,
    Request,
    Response,
    RotateRequest,
    SecretServiceError,
    ServerInfo,
    WriteRequest,
    decode_request,
    encode_response,
    op_of,
    request_body_limit,
)
from taonet.wire import END_OF_STREAM, MAX_REQUEST_HEADER, NEED_DATA, Envelope, Role
from taonet.wire import Request as EnvelopeRequest
from taonet_services.metrics import OTHER, ServiceMetrics
from taonet_services.secret_server._anonymous import AnonymousChannels, AnonymousLimits
from taonet_services.secret_server._cache import ObjectCache, Verified
from taonet_services.secret_server._reach import AlsoReaches, Reach
from taonet_services.secret_server._store import (
    MASTER_ID,
    MAX_LIST_SCAN,
    RESERVED_PREFIX,
    SecretTables,
    utc_now,
)
from taonet_services.storage import AuditStore, Database, StorageError, StorageReason

__all__ = [
    "MAX_IN_FLIGHT",
    "AuthorizeHook",
    "Call",
    "ChangeHook",
    "ChangeInHook",
    "Extension",
    "OperatorAuthenticator",
    "SecretServer",
    "covering_names",
]

log = structlog.get_logger(__name__)

#: Requests answered at once on one channel.
MAX_IN_FLIGHT: Final = 16
#: Bytes read from a channel at a time.
CHUNK_SIZE: Final = 64 * 1024
#: Seconds one answer may take to be sent before its channel is closed (a client that
#: stops reading, e.g. a watcher, is dropped; other channels never wait for it).
SEND_TIMEOUT: Final = 10.0

#: ``on_change(id, kind)`` after a committed change.
ChangeHook = Callable[[ObjectId, str], None]
#: ``change_in(cursor, id, kind)`` inside a change's transaction (commits with it).
ChangeInHook = Callable[[Any, ObjectId, str], None]
#: ``also_authorized(principal, op, name)``: consulted when the guard says no.
AuthorizeHook = Callable[[auth.Prin, str, str], bool]
#: ``await refresh_also()``: brings what ``also_authorized`` decides by up to date
#: (awaited before it is asked for a request; List and Watch ask it as it stands).
RefreshHook = Callable[[], Awaitable[None]]
#: ``authenticate_operator(request)`` -> the principal to authorize the request as.
OperatorAuthenticator = Callable[[Request], Awaitable[auth.Prin]]


@attrs.frozen
class Call:
    """Who asks, for an extension: the server, the caller's principal, its address."""

    server: SecretServer
    principal: auth.Prin
    peer: str


#: An extension serves one operation: ``await extension(call, request)``.
Extension = Callable[[Call, Request], Awaitable[Response]]


def covering_names(name: str) -> list[str]:
    """The names whose rights cover ``name``: itself, then each ancestor up to ``/``."""
    names = [name]
    while "/" in name[1:]:
        name = name[: name.rindex("/")]
        names.append(name)
    if names[-1] != "/":
        names.append("/")
    return names


def _reserved(name: str) -> bool:
    return name == RESERVED_PREFIX or name.startswith(RESERVED_PREFIX + "/")


#: Guard decisions remembered per channel (then forgotten all at once).
MAX_DECISIONS: Final = 1024
#: Guard decisions the server remembers across channels (a fresh channel per request
#: asks the guard once per principal, operation and name; then forgotten all at once).
MAX_SERVER_DECISIONS: Final = 4096


@attrs.define
class _Seen:
    """What one channel's requests share: the caller's principal as audit text, and the
    (op, name) pairs the guard allowed it (a guard is immutable: a yes stays a yes
    for as long as that guard is the server's, until a reload replaces it; grants are
    asked again every time)."""

    actor: str
    allowed: dict[tuple[str, str], Guard] = attrs.field(factory=dict)


@attrs.define
class _Pending:
    fields: dict[str, Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    failure: BaseException | None = None


#: Seconds after a batch of audit entries before a checkpoint signs them (so that
#: entries written last cannot be cut without a trace for long; batches within it
#: share one checkpoint).
CHECKPOINT_AFTER: Final = 1.0


class _AuditBatcher:
    """Appends audit entries in batches: each caller waits until its entry committed;
    a checkpoint follows within :data:`CHECKPOINT_AFTER` seconds (with a signer)."""

    def __init__(self, db: Database, audit: AuditStore, written: Callable[[float], None]) -> None:
        self._db = db
        self._audit = audit
        self._observe = written
        self._pending: list[_Pending] = []
        self._wakeup = trio.Event()
        self._written = trio.Event()

    async def record(self, **fields: Any) -> None:
        item = _Pending(fields)
        self._pending.append(item)
        self._wakeup.set()
        await item.done.wait()
        if item.failure is not None:
            raise item.failure

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self._audit.signer is not None:
                nursery.start_soon(self._checkpoints)
            await self._append_batches()

    async def _checkpoints(self) -> None:
        while True:
            await self._written.wait()
            self._written = trio.Event()
            await trio.sleep(CHECKPOINT_AFTER)  # the batches of this second: one signature
            try:
                await self._audit.checkpoint()
            except TaoError as exc:
                log.warning("audit_checkpoint_failed", error=bounded(str(exc), 500))

    async def _append_batches(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue

            def append(cur: Any, batch: list[_Pending] = batch) -> Any:
                return self._audit.append_many_in(cur, [item.fields for item in batch])[-1]

            failure: BaseException | None = None
            try:
                started = time.perf_counter()
                with trio.CancelScope(shield=True):
                    self._audit.committed(await self._db.transaction(append))
                self._observe(time.perf_counter() - started)
                self._written.set()
            except TaoError as exc:
                failure = exc
            for item in batch:
                item.failure = failure
                item.done.set()


def _failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, SecretServiceError):
        return Failure(exc.code, exc.reason)
    if isinstance(exc, StorageError):
        if exc.reason is StorageReason.CORRUPT:
            return Failure(ErrorCode.CORRUPT, f"the database is corrupt: {exc}")
        if exc.reason is StorageReason.CONFLICT:
            return Failure(ErrorCode.CONFLICT, f"changed by another request: {exc}")
        return Failure(ErrorCode.UNAVAILABLE, f"nothing was changed: {exc}")
    return Failure(ErrorCode.INTERNAL, type(exc).__name__)


class SecretServer:
    """One secret server over a database (see the module docstring)."""

    def __init__(
        self,
        tables: SecretTables,
        audit: AuditStore,
        guard: Guard,
        identity: ChannelIdentity,
        *,
        revocations: CRLSource | None = None,
        on_change: ChangeHook | None = None,
        change_in: ChangeInHook | None = None,
        authenticate_operator: OperatorAuthenticator | None = None,
        also_authorized: AuthorizeHook | None = None,
        release_master: Extension | None = None,
        extensions: Mapping[Op, Extension] | None = None,
        cache: ObjectCache | None = None,
        clock: Callable[[], float] = time.time,
        send_timeout: float = SEND_TIMEOUT,
        anonymous: AnonymousLimits | None = None,
        also_reaches: AlsoReaches | None = None,
        refresh_also: RefreshHook | None = None,
        info: ServerInfo | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.tables: Final = tables
        self.db: Final = tables.db
        self.audit: Final = audit
        self.guard = guard
        self.identity: Final = identity
        self.revocations = revocations
        self.on_change = on_change
        self.change_in = change_in
        self.authenticate_operator = authenticate_operator
        self.also_authorized = also_authorized
        self.release_master = release_master
        self.extensions: dict[Op, Extension] = dict(extensions or {})
        self.cache = cache
        self._clock = clock
        self.send_timeout = send_timeout
        #: Where requests, channels, handshakes and audit writes are counted (None: not).
        self.metrics = metrics
        self._batcher = _AuditBatcher(self.db, audit, self._audit_written)
        #: Channels without a program certificate (operators' tools): see ``_anonymous``.
        self.anonymous: Final = AnonymousChannels(anonymous)
        #: ``await record_audit(kind=..., ...)``: one entry, committed in a batch.
        self.record_audit: Final = self._batcher.record
        #: Awaited before each new channel's first request (``_domain_watch``: the
        #: guard of the domain's current signed configuration).
        self.refresh_guard: Callable[[], Awaitable[None]] | None = None
        self.also_reaches = also_reaches
        self.refresh_also = refresh_also
        self.info = info
        self._reach = Reach()
        #: (principal, op, name) -> the guard that allowed it (a yes holds while that
        #: guard is the server's: a reload replaces ``self.guard`` and every yes lapses).
        self._decisions: dict[tuple[auth.Prin, str, str], Guard] = {}

    # -- serving ------------------------------------------------------------------------

    async def serve(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (Trio's start protocol: ``task_status`` gets the listeners)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._batcher.run)
            nursery.start_soon(self.anonymous.run, self)
            listeners = await nursery.start(
                functools.partial(
                    serve_channels,
                    self.handle,
                    port,
                    self.identity,
                    host=host,
                    revocations=self.revocations,
                    # Operators may come without a program certificate (their requests
                    # carry a credential): only when a server verifies credentials.
                    allow_anonymous=self.authenticate_operator is not None,
                    on_handshake=self._handshake,
                )
            )
            task_status.started(listeners)

    def _handshake(self, outcome: HandshakeOutcome) -> None:
        if self.metrics is not None:
            self.metrics.handshake(outcome)

    def _audit_written(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.audit_written(seconds)

    def observe(self, method: str, response: Response | None, started: float) -> None:
        """Count a request answered (``response`` None: its body did not decode), with
        the latency from ``started`` (``time.perf_counter()``), if metrics are kept."""
        metrics = self.metrics
        if metrics is None:
            return
        try:
            operation = Op.from_method(method).name.lower()
        except ProtocolError:
            operation = OTHER
        if response is None:
            outcome = "bad_request"
        elif isinstance(response, Failure):
            code = response.code
            outcome = code.value if isinstance(code, ErrorCode) else OTHER
        else:
            outcome = "ok"
        metrics.request_since(operation, outcome, started)

    async def handle(self, stream: TaoStream) -> None:
        """Answer requests on one channel until the client closes it."""
        with contextlib.nullcontext() if self.metrics is None else self.metrics.channel_open():
            await self._handle(stream)

    async def _handle(self, stream: TaoStream) -> None:
        if self.refresh_guard is not None:
            await self.refresh_guard()
        principal = stream.peer.principal
        if principal is None:  # a small pool apart, one request at a time: _anonymous
            return await self.anonymous.serve(self, stream)
        peer = bounded(str(stream.peer), MAX_ACTOR_CHARS)
        seen = None if principal is None else _Seen(bounded(str(principal)))
        envelope = Envelope(
            Role.SERVER, body_limit=request_body_limit, header_limit=MAX_REQUEST_HEADER
        )
        send_lock = trio.Lock()
        slots = trio.Semaphore(MAX_IN_FLIGHT)
        channel: trio.CancelScope | None = None  # the channel's nursery, once open

        async def send(chunks: list[bytes]) -> None:
            try:  # the usual case, nobody else sending: no extra trip through the scheduler
                send_lock.acquire_nowait()
            except trio.WouldBlock:
                await send_lock.acquire()
            try:
                with trio.move_on_after(self.send_timeout) as sending:
                    await stream.send_all(b"".join(chunks))
                if sending.cancelled_caught and channel is not None:
                    # The client stopped reading (a watcher that never takes its events):
                    # drop the channel; the others never waited on it.
                    log.warning("client_too_slow", peer=peer, timeout=self.send_timeout)
                    channel.cancel()
                    await trio.aclose_forcefully(stream)
            finally:
                send_lock.release()

        async def answer(event: EnvelopeRequest) -> None:
            try:
                body = await self._answer_bytes(principal, peer, event, seen)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await send(envelope.response(event.op, event.seq, body))
            finally:
                slots.release()

        try:
            async with trio.open_nursery() as nursery:
                channel = nursery.cancel_scope
                while True:
                    try:
                        event = envelope.next_event()
                        if event is NEED_DATA:
                            envelope.body_length()  # checked before the rest of it is read
                            # One read takes whatever arrived (a whole request, usually),
                            # at most CHUNK_SIZE: the buffer ahead of a request is bounded.
                            envelope.receive_data(await stream.receive_some(CHUNK_SIZE))
                            continue
                    except (CodecError, ProtocolError) as exc:
                        log.warning("bad_request", peer=peer, error=bounded(str(exc), 500))
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            await send(envelope.answer_failure())
                        break
                    if event is END_OF_STREAM:
                        break
                    assert isinstance(event, EnvelopeRequest)
                    try:
                        Op.from_method(event.op)
                    except ProtocolError as exc:
                        await send(envelope.response(event.op, event.seq, error=exc))
                        continue
                    try:  # the reads above checkpoint; a free slot needs no other
                        slots.acquire_nowait()
                    except trio.WouldBlock:
                        await slots.acquire()
                    nursery.start_soon(answer, event)
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            # The nursery wraps what the read loop raised: a client gone is no failure.
            first = group.exceptions[0]
            why = str(first) or type(first).__name__
            log.info("client_broken", peer=peer, error=bounded(why))
        finally:
            envelope.clear()

    async def _answer_bytes(
        self, principal: auth.Prin | None, peer: str, event: EnvelopeRequest, seen: _Seen | None
    ) -> bytes:
        started = time.perf_counter()
        try:
            request = decode_request(event.op, event.body)
        except CodecError as exc:
            log.warning("bad_request", peer=peer, error=bounded(str(exc), 500))
            self.observe(event.op, None, started)
            return encode_response(Failure(ErrorCode.INVALID, str(exc)))
        response: Response
        try:
            response = await self.answer(principal, peer, request, seen=seen)
        except SecretServiceError as exc:
            response = Failure(exc.code, exc.reason)
        except TaoError as exc:
            response = _failure_of(exc)
            log.warning(
                "secret_request_failed",
                peer=peer,
                op=op_of(request).name,
                code=str(response.code),
                error=bounded(str(exc), 500),
            )
        except Exception:  # a bug (ours or a hook's): this request fails, nothing more
            log.exception("secret_request_crashed", peer=peer, op=op_of(request).name)
            response = Failure(ErrorCode.INTERNAL, "the server failed; nothing was changed")
        body = encode_response(response)
        self.observe(event.op, response, started)
        return body

    # -- authorization ------------------------------------------------------------------

    def is_authorized(
        self, principal: auth.Prin, op: str, name: str, *, seen: _Seen | None = None
    ) -> bool:
        """Whether the guard gives ``principal`` ``op`` on ``name`` or an ancestor of it
        (or, failing that, ``also_authorized`` does). ``seen``: the channel's remembered
        guard decisions (``principal`` must be that channel's)."""
        if self._guard_allows(principal, op, name, seen):
            return True
        return self.also_authorized is not None and self.also_authorized(principal, op, name)

    def _guard_allows(self, principal: auth.Prin, op: str, name: str, seen: _Seen | None) -> bool:
        guard = self.guard
        if seen is not None and seen.allowed.get((op, name)) is guard:
            return True
        decisions = self._decisions
        key = (principal, op, name)
        if decisions.get(key) is not guard:
            if not any(
                guard.is_authorized(principal, op, [auth.Str(n)]) for n in covering_names(name)
            ):
                return False
            if len(decisions) >= MAX_SERVER_DECISIONS:
                decisions.clear()
            decisions[key] = guard
        if seen is not None:
            if len(seen.allowed) >= MAX_DECISIONS:
                seen.allowed.clear()
            seen.allowed[(op, name)] = guard
        return True

    def may_reach(self, principal: auth.Prin, op: str, prefix: str) -> bool:
        """Whether ``principal`` could have ``op`` on ``prefix``, above it or on a name
        under it (the guard's rules, ``also_reaches``): List and Watch ask before
        scanning (``_reach``)."""
        prefix = prefix.rstrip("/") or "/"
        covered = self.is_authorized(principal, op, prefix)
        return self._reach.reaches(
            self.guard, principal, op, prefix, covered=covered, also=self.also_reaches
        )

    async def refuse(
        self, principal: auth.Prin, peer: str, op: str, name: str, why: str
    ) -> Failure:
        """Refuse a request anyone with a certificate can repeat at no cost (List, Watch
        with no right under the prefix): audited a few per principal, then summarized."""
        return await self._refuse(principal, peer, op, name, why, limited=True)

    async def _refuse(
        self,
        principal: auth.Prin | None,
        peer: str,
        op: str,
        name: str,
        why: str,
        *,
        limited: bool = False,
    ) -> Failure:
        if principal is None:  # anyone: a few in full per address, the rest summarized
            if not self.anonymous.record_in_full():
                return Failure(ErrorCode.UNAUTHORIZED, why)
            name, why = bounded(name, 200), bounded(why, 200)
        elif limited and not self.anonymous.record_program_in_full(principal):
            return Failure(ErrorCode.UNAUTHORIZED, why)
        log.warning("secret_refused", peer=peer, op=op, name=bounded(name, 200))
        try:
            await self._batcher.record(
                kind="secret_refused",
                actor="anonymous" if principal is None else bounded(str(principal)),
                subject=bounded(name),
                outcome="refused",
                details={"op": op, "peer": bounded(peer, 1000), "reason": bounded(why, 1000)},
            )
        except TaoError as exc:
            log.error("audit_failed", peer=peer, error=bounded(str(exc), 500))  # noqa: TRY400
        return Failure(ErrorCode.UNAUTHORIZED, why)

    async def _check(
        self, principal: auth.Prin, peer: str, op: str, name: str, seen: _Seen | None = None
    ) -> Failure | None:
        if self._guard_allows(principal, op, name, seen):
            return None
        # The guard said no: grants decide, asked once they are current (one cheap read;
        # a grant or revocation made through another replica holds at once: ``_grants``).
        if self.also_authorized is not None:
            if self.refresh_also is not None:
                await self.refresh_also()
            if self.also_authorized(principal, op, name):
                return None
        return await self._refuse(
            principal, peer, op, name, f"the guard does not give {op} on {name[:200]}"
        )

    # -- requests -----------------------------------------------------------------------

    async def answer(
        self,
        principal: auth.Prin | None,
        peer: str,
        request: Request,
        *,
        seen: _Seen | None = None,
    ) -> Response:
        """The answer to ``request`` from ``principal`` (None: an anonymous channel, which
        only a request with an operator credential may use); refusals as a Failure or
        raised. ``seen``: what the channel's earlier requests established (``handle``)."""
        op = op_of(request)
        # Anyone may ask which store this is (an operator signs its requests for it).
        if isinstance(request, InfoRequest):
            return self.info or Failure(ErrorCode.INVALID, "this server announces no store id")
        if request.operator is not None:
            seen = None  # authorized as the operator, not as the channel's principal
            if self.authenticate_operator is None:
                return await self._refuse(
                    principal,
                    peer,
                    op.value[0],
                    getattr(request, "name", getattr(request, "prefix", "/")),
                    "this server accepts no operator credentials",
                )
            try:
                principal = await self.authenticate_operator(request)
            except AuthenticationError as exc:
                return await self._refuse(
                    principal,
                    peer,
                    op.value[0],
                    getattr(request, "name", getattr(request, "prefix", "/")),
                    f"operator credential refused: {exc}",
                )
        if principal is None:
            return await self._refuse(
                principal,
                peer,
                op.value[0],
                getattr(request, "name", getattr(request, "prefix", "/")),
                "a caller without a program certificate must carry an operator credential",
            )
        extension = self.extensions.get(op)
        if extension is not None:
            return await extension(Call(self, principal, peer), request)
        if (
            self.release_master is not None
            and isinstance(request, ReadRequest)
            and request.name == MASTER_ID.name
        ):
            return await self.release_master(Call(self, principal, peer), request)
        for field in ("name", "prefix", "protector", "after"):
            value = getattr(request, field, None)
            if isinstance(value, str) and _reserved(value.rstrip("/") or "/"):
                return Failure(ErrorCode.INVALID, f"names under {RESERVED_PREFIX} are reserved")
        if isinstance(request, ReadRequest):
            return await self._read(principal, peer, request, seen)
        if isinstance(request, ListRequest):
            return await self._list(principal, peer, request)
        if isinstance(request, CreateRequest | WriteRequest | DeleteRequest | RotateRequest):
            return await self._change(principal, peer, request)
        return Failure(ErrorCode.INVALID, f"{op.method} is not served by this server")

    async def _directive_delegator(
        self, principal: auth.Prin, peer: str, request: ReadRequest
    ) -> str | Failure:
        """A Read's directive: its delegator (text) when it gives the channel's peer this
        read, else the refusal (audited). The directive must verify against the domain
        (its policy certificate, the CRL), grant ``principal`` Read on exactly the
        (name, epoch) read, and come from the policy key or a holder of Own on the name."""
        assert request.directive is not None
        name = request.name

        async def refuse(why: str) -> Failure:
            return await self._refuse(principal, peer, "Read", name, why)

        if request.operator is not None:
            return await refuse("a directive is for the channel's peer, not for an operator")
        if request.epoch is None:
            return await refuse("a Read with a directive must name the epoch it reads")
        oid = ObjectId(name, request.epoch)
        revocations = self.revocations
        try:
            directive = verify_directive(
                request.directive,
                policy=self.identity.anchor,
                now_ns=int(self._clock() * 1_000_000_000),
                revoked=None if revocations is None else revocations.is_revoked,
            )
        except (AuthorizationError, AuthenticationError, CodecError) as exc:
            return await refuse(f"directive refused: {exc}")
        if not directive.grants(principal, DirectiveOp.READ, oid):
            return await refuse(
                f"the directive grants {directive.op.value} on {directive.object_id} to"
                f" {bounded(str(directive.delegate), 300)}, not Read on {oid} to the caller"
            )
        delegator = directive.delegator
        if not directive.by_policy:
            owner = self._guard_allows(delegator, "Own", name, None)
            if not owner and self.also_authorized is not None:
                if self.refresh_also is not None:
                    await self.refresh_also()
                owner = self.also_authorized(delegator, "Own", name)
            if not owner:
                return await refuse(
                    f"the directive's signer {bounded(str(delegator), 300)} does not hold"
                    f" Own on {name[:200]}"
                )
        return bounded(str(delegator))

    async def _read(
        self, principal: auth.Prin, peer: str, request: ReadRequest, seen: _Seen | None
    ) -> Response:
        delegated: dict[str, str] = {}
        if request.directive is not None:  # in place of the guard's Read
            delegator = await self._directive_delegator(principal, peer, request)
            if isinstance(delegator, Failure):
                return delegator
            delegated = {
                "directive": directive_digest(request.directive),
                "delegator": delegator,
            }
        else:
            refused = await self._check(principal, peer, "Read", request.name, seen)
            if refused is not None:
                return refused
        now = utc_now()
        cache = self.cache
        verified: Verified | None = (
            None if cache is None else cache.lookup(request.name, request.epoch, now)
        )
        if verified is None:
            # One snapshot for the manifest, every row of the chain and the audit head:
            # at PostgreSQL's default READ COMMITTED each statement would see the commits
            # made since the last, and a write landing between them looked like a
            # rolled-back row.
            try:
                verified = await self.db.transaction(
                    lambda cur: self.tables.read_verified_in(cur, request.name, request.epoch, now),
                    write=False,
                    serializable=True,
                )
            except CorruptError as exc:  # never served; said where it is seen
                log.error(  # noqa: TRY400 (its reason, not a traceback)
                    "secret_corrupt",
                    peer=peer,
                    name=bounded(request.name, 200),
                    error=bounded(str(exc), 500),
                )
                raise
            if cache is not None:
                cache.put(request.name, request.epoch, verified)
        obj = verified.obj
        details = {"op": "Read", "peer": bounded(peer, 1000), **delegated}
        if verified.tag is not None:  # which version went out (its row's tag, as written)
            details["tag"] = verified.tag.hex()
            # Every change recorded up to this entry was visible to the read (the audit
            # head in the read's own snapshot; a cache hit's is still true, as nothing
            # changed since: the cache is generation-checked).
            read_after = verified.audit_seq
            if read_after is None:
                known = self.audit.known
                read_after = 0 if known is None else known[0]
            details["read_after"] = str(read_after)
        if verified.protector is not None:  # "NAME#EPOCH" of the key that wrapped it
            details["protector"] = bounded(verified.protector, 1100)
        # The release is on record before the value leaves.
        await self._batcher.record(
            kind="secret_released",
            actor=seen.actor if seen is not None else bounded(str(principal)),
            subject=str(obj.id),
            outcome="ok",
            details=details,
        )
        return obj

    async def _list(self, principal: auth.Prin, peer: str, request: ListRequest) -> Response:
        prefix = request.prefix.rstrip("/") or "/"
        if not self.may_reach(principal, "Read", prefix):  # no scan for nothing
            why = f"the caller may Read no name under {prefix[:200]}"
            return await self.refuse(principal, peer, "List", prefix, why)
        # Read on the prefix (or above) covers every name under it: no filtering.
        whole = self.is_authorized(principal, "Read", prefix)
        names: list[str] = []
        after = request.after
        scanned = 0
        while True:
            chunk = request.limit + 1 if whole else min(MAX_LIST_SCAN - scanned, 2 * request.limit)
            found: list[str] = await self.db.transaction(
                functools.partial(self.tables.list_in, prefix=prefix, after=after, limit=chunk),
                write=False,
            )
            for name in found:
                scanned += 1
                after = name
                if whole or self.is_authorized(principal, "Read", name):
                    if len(names) == request.limit:
                        return Listing(names, names[-1])  # more follow
                    names.append(name)
            if len(found) < chunk:
                return Listing(names, None)
            if not whole and scanned >= MAX_LIST_SCAN:
                # next_after is only ever a name returned: never one the caller may not read.
                if names:
                    return Listing(names, names[-1])
                return Failure(
                    ErrorCode.INVALID,
                    f"more than {MAX_LIST_SCAN} names under {prefix[:200]} that the caller may"
                    " not read: list a narrower prefix, or one the caller may read",
                )

    async def _change(
        self,
        principal: auth.Prin,
        peer: str,
        request: CreateRequest | WriteRequest | DeleteRequest | RotateRequest,
    ) -> Response:
        op = {CreateRequest: "Create", WriteRequest: "Write", DeleteRequest: "Delete"}.get(
            type(request), "Own"
        )
        refused = await self._check(principal, peer, op, request.name)
        if refused is not None:
            return refused
        if isinstance(request, CreateRequest) and request.protector is not None:
            refused = await self._check(principal, peer, "Read", request.protector)
            if refused is not None:
                return refused
        now = utc_now()
        actor = bounded(str(principal))
        tables = self.tables

        def change(cur: Any) -> tuple[Response, ObjectId, str, dict[str, str]]:
            response: Response
            details: dict[str, str] = {"peer": bounded(peer, 1000)}
            if isinstance(request, CreateRequest):
                oid, tag = tables.create_in(
                    cur,
                    request.name,
                    request.value,
                    request.type,
                    request.protector,
                    request.not_before,
                    request.not_after,
                    now,
                )
                response, kind = Changed(oid), "created"
                details |= {"tag": tag.hex(), "type": request.type}
                if request.protector is not None:
                    details["protector"] = bounded(request.protector, 1100)
            elif isinstance(request, WriteRequest):
                oid, tag = tables.write_in(cur, request.name, request.epoch, request.value, now)
                response, kind = Changed(oid), "written"
                details["tag"] = tag.hex()
            elif isinstance(request, DeleteRequest):
                epochs = tables.delete_in(cur, request.name, request.epoch)
                oid = ObjectId(request.name, max(epochs))
                response, kind = Deleted(request.name, epochs), "deleted"
                details["epochs"] = ",".join(map(str, epochs))[:1000]
            else:
                oid, rewrapped, tag, retired = tables.rotate_in(
                    cur, request.name, request.value, now
                )
                response, kind = Changed(oid), "rotated"
                details |= {
                    "rewrapped": str(rewrapped),
                    "tag": tag.hex(),
                    "retired_tag": retired.hex(),
                }
            entries[:] = [
                self.audit.append_in(
                    cur,
                    kind=f"secret_{kind}",
                    actor=actor,
                    subject=str(oid) if kind != "deleted" else request.name,
                    outcome="ok",
                    details=details,
                )
            ]
            if self.change_in is not None:  # in the change's own transaction
                self.change_in(cur, oid, kind)
            return response, oid, kind, details

        entries: list[Any] = []
        response, oid, kind, details = await self.db.transaction(change)
        self.audit.committed(entries[0])  # the chain must keep it (see AuditStore)
        log.info(f"secret_{kind}", peer=peer, id=bounded(str(oid), 200), **_loggable(details))
        if self.on_change is not None:
            try:
                self.on_change(oid, kind)
            except Exception:  # a hook's bug must not fail a committed change
                log.exception("on_change_failed", id=bounded(str(oid), 200))
        return response


def _loggable(details: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in details.items() if k in ("rewrapped", "epochs", "type")}
