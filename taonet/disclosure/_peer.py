"""The disclosure peer protocol on Trio: a program serves its keys to a successor that
presents a directive, and the successor fetches and seals them.

* :func:`serve_disclosure` (the running program, e.g. version 1) answers
  ``Disclosure.Fetch`` over Tao channels (:mod:`taonet.disclosure._peer_protocol`).
  A request carries one or more directives and the ids asked. The server releases
  the objects only when, for the channel's verified peer principal (never a
  principal named in the request):

  1. each id asked has exactly one directive, and each directive is for an id
     asked (so no more directives than ids); as decoded, each is for that peer,
     op Read, on the exact id (name and epoch); a request that asks for one id
     more is refused entirely;
  2. the delegator of each is the policy key, or a program that owns the object
     (``owns(delegator, id)``, sync or async, yes only when it answers True; it
     may be asked about a name from a directive not yet verified; default: the
     serving program's own principal owns the keys it serves);
  3. then each verifies (:func:`~taonet.disclosure.verify_directive`: the
     signature, the window against the clock, the speaker: the policy key, or a
     program whose certificate chains to the policy key and is not revoked in the
     domain's CRL): one signature per id asked at most, never one for a request the
     cheap checks above refuse, with a checkpoint every few;
  4. the key source holds every id asked.

  Anything else is refused (nothing released) with a typed code and a reason.
  Every release and refusal is logged (``disclosure_released``,
  ``disclosure_refused``, bounded) and, with an ``audit`` hook, recorded through
  it before the answer is sent (a release the hook cannot record is not made). A
  release's audit names every id released: its ids, whole, in entries of at most
  :data:`AUDIT_IDS_CHARS` characters (details ``release``, a random token the
  entries of one release share, and ``part``, ``1/n`` to ``n/n``); a release is
  made only once its last part is recorded.
* :func:`request_disclosure` (the successor, e.g. version 2) asks a peer for ids
  under directives over one channel: all the ids asked or an exception. The caller
  names the peer it expects (``server=``, required; :data:`ANY_SERVER` is the
  explicit opt-out): any program of the domain can listen at an address.
* :func:`fetch_and_seal` fetches, seals the objects with the program's
  :class:`~taonet.hosts.Tao` (policy ``"self"``) and writes the sealed blob
  atomically (``taonet.files.atomic_write``), keeping the objects a file already
  at that path holds (``replace=True`` does not): a peer that fails or disconnects
  halfway leaves nothing (no file, no temp file); :func:`open_sealed` reads it back.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import hmac
import inspect
import os
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

import trio

from taonet import auth, certs
from taonet._edges import map_os_errors
from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    ProtocolError,
    TaoError,
)
from taonet._files import atomic_write, read_file
from taonet._log import get_logger
from taonet.audit import bounded
from taonet.channel import ChannelIdentity, CRLSource, TaoStream, open_channel, serve_channels
from taonet.disclosure import (
    Directive,
    DirectiveOp,
    decode_directive,
    directive_digest,
    verify_directive,
)
from taonet.disclosure._peer_protocol import (
    FETCH_METHOD,
    MAX_FETCH_REQUEST_BODY,
    MAX_FETCH_RESPONSE_BODY,
    DisclosureCode,
    DisclosureRefusedError,
    FetchFailure,
    FetchRequest,
    decode_fetch_request,
    decode_fetch_response,
    encode_fetch_request,
    encode_fetch_response,
)
from taonet.hosts import Tao
from taonet.protected import (
    ObjectId,
    SecretObject,
    decode_object_store,
    encode_object_store,
)
from taonet.wire import END_OF_STREAM, MAX_REQUEST_HEADER, NEED_DATA, Envelope, Role
from taonet.wire import Request as EnvelopeRequest
from taonet.wire import Response as EnvelopeResponse

__all__ = [
    "ANY_SERVER",
    "AUDIT_IDS_CHARS",
    "CALL_TIMEOUT",
    "MAX_SEALED_BYTES",
    "AnyServer",
    "AuditHook",
    "KeySource",
    "OwnsHook",
    "fetch_and_seal",
    "open_sealed",
    "request_disclosure",
    "serve_disclosure",
]

log = get_logger(__name__)

#: Bound on one request, from opening the channel to the whole answer.
CALL_TIMEOUT: Final = 60.0
#: Largest sealed file :func:`open_sealed` reads.
MAX_SEALED_BYTES: Final = MAX_FETCH_RESPONSE_BODY + 64 * 1024
_CHUNK: Final = 64 * 1024
_MAX_REPLY_FRAME: Final = MAX_FETCH_RESPONSE_BODY + 1024
#: Longest subject (the ids, comma-separated) of one audit entry of a release: a
#: release of more is recorded in several entries, ``part`` 1/n to n/n.
AUDIT_IDS_CHARS: Final = 4000
# Directive signatures checked between two checkpoints of a request.
_VERIFY_BATCH: Final = 8


class AnyServer(enum.Enum):
    """The type of :data:`ANY_SERVER`."""

    ANY_SERVER = "any server of the domain"


#: ``server=ANY_SERVER``: take the keys from whichever program of the domain answers at
#: the address (its channel is still verified against the policy key). An explicit
#: opt-out: any program of the domain that listens there (a squatter on the port, a
#: stale address) then chooses the keys the caller takes for the ones asked.
ANY_SERVER: Final = AnyServer.ANY_SERVER


class KeySource(Protocol):
    """Where a server finds the objects it may release: ``get(id)`` returns the object,
    or None; sync or async (a :class:`dict` of ids to objects is one)."""

    def get(self, key: ObjectId, /) -> SecretObject | Awaitable[SecretObject | None] | None: ...


#: ``owns(delegator, id)``: whether the program ``delegator`` owns the object ``id``;
#: sync or async (an awaitable answer is awaited). Only ``True`` itself says yes.
OwnsHook = Callable[[auth.Prin, ObjectId], bool | Awaitable[bool]]
#: ``await audit(kind=..., actor=..., subject=..., outcome=..., details={...})``
#: (the shape of a secret server's ``record_audit``).
AuditHook = Callable[..., Awaitable[None]]


def _id_parts(ids: Sequence[ObjectId]) -> list[str]:
    """The ids' texts, comma-separated, in parts of at most :data:`AUDIT_IDS_CHARS`
    characters, each id whole in one part (an id is at most about 1050 characters)."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for oid in ids:
        text = str(oid)
        if current and size + 1 + len(text) > AUDIT_IDS_CHARS:
            parts.append(",".join(current))
            current, size = [], 0
        size += len(text) + (1 if current else 0)
        current.append(text)
    parts.append(",".join(current))
    return [bounded(part, 2 * AUDIT_IDS_CHARS) for part in parts]


def _digest(directives: Sequence[bytes]) -> str:
    """The directive's :func:`~taonet.disclosure.directive_digest` (of its signed
    statement and signer: other bytes of the same grant keep it), or SHA-256 (hex) of
    the directives' digests in order; an undecodable one counts as ``bytes:`` and
    the SHA-256 of its bytes."""
    names = []
    for raw in directives:
        try:
            names.append(directive_digest(raw))
        except CodecError:
            names.append("bytes:" + hashlib.sha256(raw).hexdigest())
    if len(names) == 1:
        return names[0]
    return hashlib.sha256(",".join(names).encode()).hexdigest()


class _Refused(Exception):
    def __init__(self, code: DisclosureCode, reason: str) -> None:
        super().__init__(reason)
        self.failure = FetchFailure(code, reason)


class _Server:
    """What :func:`serve_disclosure`'s connections share."""

    def __init__(
        self,
        keys: KeySource,
        identity: ChannelIdentity,
        anchor: certs.PolicyAnchor,
        revocations: CRLSource | None,
        owns: OwnsHook | None,
        audit: AuditHook | None,
        clock: Callable[[], int],
    ) -> None:
        self.keys = keys
        self.me = identity.principal
        self.anchor = anchor
        self.revocations = revocations
        self.owns = owns
        self.audit = audit
        self.clock = clock
        self.policy_principal = auth.key_principal(anchor.public_key_der)

    async def _owns(self, delegator: auth.Prin, oid: ObjectId) -> bool:
        """Whether ``delegator`` owns ``oid``: the hook's answer, awaited when it is
        awaitable, and only ``True`` itself (not a truthy object) says yes."""
        if self.owns is None:
            return self.me is not None and delegator == self.me
        answer = self.owns(delegator, oid)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is True

    def _check_says(self, directive: Directive, peer: auth.Prin) -> None:
        """What a directive says, checked for ``peer``: for it, and Read."""
        if directive.delegate != peer:
            raise _Refused(
                DisclosureCode.UNAUTHORIZED,
                f"the directive is for {bounded(str(directive.delegate), 300)}, not for this"
                f" channel's peer {bounded(str(peer), 300)}",
            )
        if directive.op is not DirectiveOp.READ:
            raise _Refused(
                DisclosureCode.UNAUTHORIZED,
                f"the directive grants {directive.op.value}, not Read",
            )

    def _verify(self, raw: bytes, peer: auth.Prin) -> Directive:
        revoked = None if self.revocations is None else self.revocations.is_revoked
        try:
            directive = verify_directive(
                raw, policy=self.anchor, now_ns=self.clock(), revoked=revoked
            )
        except (AuthorizationError, AuthenticationError, CodecError) as exc:
            raise _Refused(DisclosureCode.UNAUTHORIZED, f"directive refused: {exc}") from None
        self._check_says(directive, peer)
        return directive

    async def _check_owner(self, directive: Directive, oid: ObjectId) -> None:
        if not await self._owns(directive.delegator, oid):
            raise _Refused(
                DisclosureCode.UNAUTHORIZED,
                f"{bounded(str(directive.delegator), 300)} signed the directive but does"
                f" not own {bounded(str(oid), 300)}",
            )

    async def release(
        self, peer: auth.Prin, request: FetchRequest
    ) -> tuple[list[SecretObject], list[Directive]]:
        """The objects ``request`` asks for, if everything allows it; _Refused else.

        The cheap checks come first, on what the directives say (decoded, not yet
        verified): at most one directive per id asked and none for an id not asked,
        each for ``peer`` and Read, its delegator the policy key or an owner. Only
        then is each verified (one signature per id asked, at most), with a
        checkpoint every few so that the other connections go on being served.
        """
        if len(request.directives) > len(request.ids):
            raise _Refused(
                DisclosureCode.UNAUTHORIZED,
                f"{len(request.directives)} directives for {len(request.ids)} ids: at most"
                " one directive per id asked",
            )
        asked = frozenset(request.ids)
        by_object: dict[ObjectId, Directive] = {}
        for raw in request.directives:
            try:
                said = decode_directive(raw)
            except CodecError as exc:
                raise _Refused(DisclosureCode.UNAUTHORIZED, f"directive refused: {exc}") from None
            oid = said.object_id
            if oid not in asked:
                raise _Refused(
                    DisclosureCode.UNAUTHORIZED,
                    f"a directive for {bounded(str(oid), 300)}, which is not asked for",
                )
            if oid in by_object:
                raise _Refused(
                    DisclosureCode.UNAUTHORIZED,
                    f"two directives for {bounded(str(oid), 300)}: one per id asked",
                )
            by_object[oid] = said
        owner_checked: set[ObjectId] = set()
        for oid in request.ids:
            claim = by_object.get(oid)
            if claim is None:
                raise _Refused(
                    DisclosureCode.UNAUTHORIZED,
                    f"no directive grants Read on {bounded(str(oid), 300)}: nothing released",
                )
            self._check_says(claim, peer)
            if claim.delegator != self.policy_principal:
                await self._check_owner(claim, oid)  # a question about a name: nothing given
                owner_checked.add(oid)
        used: dict[ObjectId, Directive] = {}
        for count, oid in enumerate(request.ids, 1):
            granting = self._verify(by_object[oid].raw, peer)
            if not granting.grants(peer, DirectiveOp.READ, oid):  # the same bytes: never
                raise _Refused(
                    DisclosureCode.UNAUTHORIZED, f"no Read on {bounded(str(oid), 300)} verified"
                )
            if not granting.by_policy and oid not in owner_checked:
                await self._check_owner(granting, oid)
            used[oid] = granting
            if count % _VERIFY_BATCH == 0:
                await trio.lowlevel.checkpoint()
        objects: list[SecretObject] = []
        for oid in request.ids:
            found = self.keys.get(oid)
            if inspect.isawaitable(found):
                found = await found
            if found is None:
                raise _Refused(
                    DisclosureCode.NOT_FOUND,
                    f"no object {bounded(str(oid), 300)} here: nothing released",
                )
            if not isinstance(found, SecretObject) or found.id != oid:
                raise _Refused(DisclosureCode.INTERNAL, "the key source answered another object")
            objects.append(found)
        return objects, list(used.values())

    async def answer(self, peer: auth.Prin, shown: str, body: bytes) -> bytes:
        """The answer body to one request body from ``peer`` (``shown``: its text)."""
        note = {"directive": "", "ids": ""}  # what the request named, for a refusal
        try:
            return await self._release_bytes(peer, shown, body, note)
        except _Refused as refused:
            return await self._refusal(shown, refused.failure, note)

    async def _release_bytes(
        self, peer: auth.Prin, shown: str, body: bytes, note: dict[str, str]
    ) -> bytes:
        try:
            request = decode_fetch_request(body)
        except CodecError as exc:
            raise _Refused(DisclosureCode.INVALID, str(exc)) from None
        note["directive"] = digest = _digest(request.directives)
        note["ids"] = subject = bounded(",".join(map(str, request.ids)), 1000)
        objects, used = await self.release(peer, request)
        try:
            reply = encode_fetch_response(objects)
        except ValueError as exc:
            raise _Refused(DisclosureCode.INVALID, f"{exc}: ask for fewer ids") from None
        delegators = ",".join(sorted({str(d.delegator) for d in used}))
        if self.audit is not None:
            # On record before the keys leave, every id; a release that cannot be is
            # not made.
            parts = _id_parts(request.ids)
            release = secrets.token_hex(8)
            try:
                for number, part in enumerate(parts, 1):
                    await self.audit(
                        kind="disclosure_released",
                        actor=shown,
                        subject=part,
                        outcome="ok",
                        details={
                            "peer": shown,
                            "directive": digest,
                            "delegator": bounded(delegators, 1000),
                            "count": str(len(objects)),
                            "release": release,
                            "part": f"{number}/{len(parts)}",
                        },
                    )
            except TaoError as exc:
                log.error("disclosure_audit_failed", peer=shown, error=bounded(str(exc), 500))  # noqa: TRY400
                raise _Refused(
                    DisclosureCode.INTERNAL, "the release could not be audited"
                ) from None
        log.info(
            "disclosure_released",
            peer=shown,
            count=len(objects),
            ids=bounded(subject, 300),
            directive=digest,
            delegator=bounded(delegators, 300),
        )
        return reply

    async def _refusal(self, shown: str, failure: FetchFailure, note: dict[str, str]) -> bytes:
        log.warning(
            "disclosure_refused",
            peer=shown,
            code=failure.code.value if isinstance(failure.code, DisclosureCode) else failure.code,
            reason=bounded(failure.reason, 500),
            ids=bounded(note["ids"], 300),
        )
        if self.audit is not None and failure.code is not DisclosureCode.INTERNAL:
            try:
                await self.audit(
                    kind="disclosure_refused",
                    actor=shown,
                    subject=note["ids"] or "-",
                    outcome="refused",
                    details={
                        "peer": shown,
                        "directive": note["directive"],
                        "reason": bounded(failure.reason, 1000),
                    },
                )
            except TaoError as exc:
                log.error("disclosure_audit_failed", peer=shown, error=bounded(str(exc), 500))  # noqa: TRY400
        return encode_fetch_response(failure)

    async def handle(self, stream: TaoStream) -> None:
        """Answer requests on one channel, one at a time, until the peer closes it."""
        principal = stream.peer.principal
        if principal is None:  # serve_channels is not asked to take anonymous peers
            await stream.aclose()
            return
        shown = bounded(str(principal), 1000)
        envelope = Envelope(
            Role.SERVER,
            body_limit=lambda method: MAX_FETCH_REQUEST_BODY if method == FETCH_METHOD else 0,
            header_limit=MAX_REQUEST_HEADER,
            max_frame=_MAX_REPLY_FRAME,
        )
        try:
            while True:
                try:
                    event = envelope.next_event()
                    if event is NEED_DATA:
                        envelope.body_length()  # checked before the rest of it is read
                        envelope.receive_data(await stream.receive_some(_CHUNK))
                        continue
                except (CodecError, ProtocolError) as exc:
                    log.warning("disclosure_bad_request", peer=shown, error=bounded(str(exc), 500))
                    await stream.send_all(b"".join(envelope.answer_failure()))
                    return
                if event is END_OF_STREAM:
                    return
                assert isinstance(event, EnvelopeRequest)
                if event.op != FETCH_METHOD:
                    error = ProtocolError(f"unknown disclosure method {event.op[:64]!r}")
                    await stream.send_all(
                        b"".join(envelope.response(event.op, event.seq, error=error))
                    )
                    continue
                body = await self.answer(principal, shown, event.body)
                await stream.send_all(b"".join(envelope.response(event.op, event.seq, body)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info(
                "disclosure_client_broken",
                peer=shown,
                error=bounded(str(exc) or type(exc).__name__),
            )
        finally:
            envelope.clear()


async def serve_disclosure(
    keys: KeySource | Mapping[ObjectId, SecretObject],
    port: int,
    identity: ChannelIdentity,
    *,
    policy: certs.PolicyAnchor | None = None,
    revocations: CRLSource | None = None,
    owns: OwnsHook | None = None,
    audit: AuditHook | None = None,
    host: str = "127.0.0.1",
    clock: Callable[[], int] = time.time_ns,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``Disclosure.Fetch`` on ``host:port`` until cancelled (see the module
    docstring for what is released to whom).

    ``keys``: the objects this program may release (``get(id)``, sync or async).
    ``policy``: the domain's policy anchor (default: ``identity``'s). ``revocations``:
    the domain's CRL, enforced on channels and on the certificates of program-signed
    directives. ``owns(delegator, id)``: whether a program delegator owns an object,
    sync or async, yes only when it answers ``True`` (default: only this program
    itself). ``audit``: awaited for each release (before the objects are sent; once
    per part of its ids) and each refusal. ``clock``: ns since the epoch, for the
    directives' windows. Trio's start protocol: ``task_status`` gets the listeners.
    """
    server = _Server(
        keys,
        identity,
        policy if policy is not None else identity.anchor,
        revocations,
        owns,
        audit,
        clock,
    )
    await serve_channels(
        server.handle,
        port,
        identity,
        host=host,
        revocations=revocations,
        task_status=task_status,
    )


def _check_server(server: object) -> None:
    if server is not ANY_SERVER and not isinstance(server, auth.Prin):
        raise TypeError(
            "server= must be the disclosure peer's principal (or ANY_SERVER to take any"
            f" program of the domain), not {type(server).__name__}"
        )


def _directives(directives: bytes | Sequence[bytes]) -> tuple[bytes, ...]:
    if isinstance(directives, bytes | bytearray | memoryview):
        return (bytes(directives),)
    return tuple(bytes(d) for d in directives)


async def _exchange(stream: TaoStream, body: bytes) -> EnvelopeResponse:
    envelope = Envelope(
        Role.CLIENT,
        body_limit=MAX_FETCH_RESPONSE_BODY,
        max_frame=_MAX_REPLY_FRAME,
        default_error=ProtocolError,
    )
    try:
        await stream.send_all(b"".join(envelope.request(FETCH_METHOD, 1, body)))
        while True:
            event = envelope.next_event()
            if event is NEED_DATA:
                envelope.receive_data(await stream.receive_some(_CHUNK))
                continue
            if event is END_OF_STREAM:
                raise ProtocolError("the disclosure peer closed the channel without answering")
            assert isinstance(event, EnvelopeResponse)
            return event
    except CodecError as exc:
        raise ProtocolError(f"bad answer from the disclosure peer: {exc}") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ProtocolError(f"the channel to the disclosure peer broke: {exc}") from exc
    finally:
        envelope.clear()


async def request_disclosure(
    address: tuple[str, int],
    identity: ChannelIdentity,
    directives: bytes | Sequence[bytes],
    ids: Sequence[ObjectId],
    *,
    server: auth.Prin | AnyServer,
    revocations: CRLSource | None = None,
) -> dict[ObjectId, SecretObject]:
    """Ask the disclosure peer at ``address`` for ``ids`` under ``directives`` (one
    directive's bytes, or several), over one Tao channel made with ``identity``.

    ``server`` (required): the principal the peer must prove it is (the program that
    holds the keys, e.g. version 1), or :data:`ANY_SERVER` to take any program of
    the domain (see there why that is rarely what you want).

    Returns every object asked for, by id, or raises: :class:`DisclosureRefusedError`
    (an AuthorizationError) when the peer refused, ProtocolError when the channel
    broke or the answer is malformed or not exactly the ids asked for,
    AuthenticationError when the peer is not ``server``,
    trio.TooSlowError after :data:`CALL_TIMEOUT` seconds (wrap the call in
    ``trio.fail_after`` for less). ValueError for bad arguments (no id,
    more than :data:`MAX_FETCH`, an id twice); TypeError for a ``server`` that is
    neither a principal nor :data:`ANY_SERVER`.
    """
    _check_server(server)
    request = FetchRequest(_directives(directives), tuple(ids))
    body = encode_fetch_request(request)
    host, port = address
    with trio.fail_after(CALL_TIMEOUT):
        with map_os_errors(
            to=ProtocolError, what=f"cannot reach the disclosure peer at {host}:{port}"
        ):
            stream = await open_channel(host, port, identity, revocations=revocations)
        try:
            try:
                await stream.wait_accepted()  # the peer's verdict on us
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ProtocolError(
                    f"the disclosure peer at {host}:{port} closed the channel: {exc}"
                ) from exc
            peer = stream.peer.principal
            if server is not ANY_SERVER and peer != server:
                raise AuthenticationError(
                    f"the disclosure peer at {host}:{port} is {bounded(str(peer), 300)},"
                    f" not {bounded(str(server), 300)}"
                )
            answer = await _exchange(stream, body)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()  # a clean close: the peer sees the end, not a failure
    if answer.error is not None:
        raise answer.error
    try:
        response = decode_fetch_response(answer.body)
    except CodecError as exc:
        raise ProtocolError(f"bad answer from the disclosure peer: {exc}") from exc
    if isinstance(response, FetchFailure):
        raise DisclosureRefusedError(response.code, response.reason)
    got = tuple(obj.id for obj in response)
    if got != request.ids:
        raise ProtocolError(
            f"the disclosure peer answered {len(got)} objects that are not the"
            f" {len(request.ids)} asked for"
        )
    return {obj.id: obj for obj in response}


async def fetch_and_seal(
    address: tuple[str, int],
    identity: ChannelIdentity,
    directives: bytes | Sequence[bytes],
    ids: Sequence[ObjectId],
    *,
    tao: Tao,
    path: str | Path,
    server: auth.Prin | AnyServer,
    revocations: CRLSource | None = None,
    replace: bool = False,
) -> dict[ObjectId, SecretObject]:
    """:func:`request_disclosure` (``server`` required, as there), then seal every
    object got with ``tao`` (policy ``"self"``: only this program can unseal them)
    into one ``object_store_message`` and write it at ``path`` atomically (mode
    0600). Read it back with :func:`open_sealed`. Returns the objects this call got.

    A file already at ``path`` is kept in: it is opened first (with ``tao``; before
    anything is asked of the peer), and the file written holds its objects and the
    ones got, so that batches of at most :data:`MAX_FETCH` ids add up. An id got
    again with the same value (and type) takes the new object (its status or
    window may have changed); with another value, ProtocolError and nothing is
    written. A file that does not open (another program's, corrupt: HostError,
    CodecError, ConfigError) is left as it is and nothing is fetched. With
    ``replace=True`` the file holds only the objects got (the earlier file is
    neither opened nor kept). ConfigError when the sealed file would be larger than
    :data:`MAX_SEALED_BYTES` (which :func:`open_sealed` reads): seal further
    batches at another path. Calls of this process for one path run one after the
    other; other processes writing the same path are not kept out.

    Nothing is written unless every object arrived: a refusal, a broken channel or
    a failed seal leaves ``path`` as it was (and no temp file).
    """
    _check_server(server)
    lock = _path_lock(path)  # held here while the call runs (a weak value there)
    async with lock:
        earlier: dict[ObjectId, SecretObject] = {}
        if not replace and await trio.to_thread.run_sync(os.path.lexists, path):
            earlier = await open_sealed(tao, path)
        objects = await request_disclosure(
            address,
            identity,
            directives,
            ids,
            revocations=revocations,
            server=server,
        )
        kept = dict(earlier)
        for oid, obj in objects.items():
            before = kept.get(oid)
            if before is not None and not _same_value(before, obj):
                raise ProtocolError(
                    f"the disclosure peer answered {bounded(str(oid), 300)} with another value"
                    f" than the one sealed at {path}: nothing written"
                )
            kept[oid] = obj
        sealed = await tao.seal(encode_object_store(kept.values()), "self")
        if len(sealed) > MAX_SEALED_BYTES:
            raise ConfigError(
                f"{path} would hold {len(sealed)} bytes sealed, over the {MAX_SEALED_BYTES}"
                " bytes open_sealed reads: seal this batch at another path (nothing written)"
            )
        await trio.to_thread.run_sync(functools.partial(atomic_write, path, sealed, mode=0o600))
    return objects


def _same_value(a: SecretObject, b: SecretObject) -> bool:
    return a.type == b.type and hmac.compare_digest(a.value, b.value)


# One lock per sealed file this process writes (while a call holds it).
_path_locks: weakref.WeakValueDictionary[str, trio.Lock] = weakref.WeakValueDictionary()


def _path_lock(path: str | Path) -> trio.Lock:
    key = os.path.abspath(path)
    lock = _path_locks.get(key)
    if lock is None:
        lock = _path_locks[key] = trio.Lock()
    return lock


async def open_sealed(tao: Tao, path: str | Path) -> dict[ObjectId, SecretObject]:
    """The objects :func:`fetch_and_seal` wrote at ``path``, unsealed with ``tao``
    (ConfigError if unreadable, HostError if this program did not seal them,
    CodecError if they do not decode)."""
    blob = await trio.to_thread.run_sync(functools.partial(read_file, path, limit=MAX_SEALED_BYTES))
    data, policy = await tao.unseal(blob)
    if policy != "self":
        raise HostError(f"{path} was sealed under policy {policy!r}, expected 'self'")
    return {obj.id: obj for obj in decode_object_store(data)}
