"""The master key for replicas: handed over a Tao channel to a principal the guard allows.

Replicas share one database; each keeps its own copy of the master key there,
sealed by its own Tao (``secret_master``, one row per server principal). A replica
started on another host cannot unseal the first one's copy, so it asks a running
replica for the key (:func:`adopt_master`, ``taonet secret-server --replica-of
HOST:PORT``), seals it under its own Tao and stores its sealed copy. The key is
never on disk or in the database in the clear.

Who may hold it (decided by the domain's guard, asked for exactly this name, no
prefix covers it): ``Authorized(P, "Own", "/taonet.secret-server/master")``; e.g.
the rule ``Authorized(ext.Program([h]), "Own", "/taonet.secret-server/master")``
lets the secret server's program hold it on any host of the domain. Both sides
check it:

* the running replica (:func:`release_master`, served for a Read of
  :data:`MASTER_ID`'s name) answers only a channel peer (a program with a Tao, not
  an operator credential, not an anonymous client) the guard allows; every release
  and refusal is audited (``secret_master_released``, ``secret_master_refused``)
  and the release is committed to the audit log before the key leaves;
* the new replica takes the key only from a peer the guard allows to hold it, and
  checks it against the database (a stored object's integrity code must verify
  under it) before sealing and storing it.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import structlog

from taonet import AuthenticationError, AuthorizationError, ConfigError, auth
from taonet.audit import MAX_ACTOR_CHARS, bounded
from taonet.channel import ChannelIdentity, CRLSource, open_channel
from taonet.domain import Guard
from taonet.hosts import Tao
from taonet.protected import SecretObject, encode_object
from taonet.secrets import (
    ConflictError,
    CorruptError,
    ErrorCode,
    Failure,
    NotFoundError,
    ReadRequest,
    Request,
    Response,
    connect,
)
from taonet_services.secret_server._service import Call
from taonet_services.secret_server._store import MASTER_ID, SecretTables
from taonet_services.storage import Database

__all__ = ["MASTER_OP", "adopt_master", "may_hold_master", "release_master"]

log = structlog.get_logger(__name__)

#: The guard's operation on MASTER_ID's name that lets a principal hold the master key.
MASTER_OP = "Own"


def may_hold_master(guard: Guard, principal: auth.Prin) -> bool:
    """Whether the guard lets ``principal`` hold the master key (exactly that name)."""
    return guard.is_authorized(principal, MASTER_OP, [auth.Str(MASTER_ID.name)])


async def release_master(
    call: Call, request: Request, *, operator_principal: auth.Prin | None = None
) -> Response:
    """The master key for a replica (see the module docstring), or a refusal."""
    if not isinstance(request, ReadRequest) or request.name != MASTER_ID.name:
        return Failure(ErrorCode.INVALID, "not a request for the master key")
    server = call.server
    why = None
    if request.operator is not None or call.principal == operator_principal:
        why = "the master key goes to a replica's Tao channel, not to an operator"
    elif request.epoch not in (None, MASTER_ID.epoch):
        why = "no such epoch of the master key"
    elif not may_hold_master(server.guard, call.principal):
        why = f'the guard does not give {MASTER_OP} on "{MASTER_ID.name}"'
    actor = bounded(str(call.principal), MAX_ACTOR_CHARS)
    details = {"peer": bounded(call.peer, 1000)}
    if why is not None:
        log.warning("secret_master_refused", peer=call.peer, why=why)
        await server.audit.append(
            kind="secret_master_refused",
            actor=actor,
            subject=MASTER_ID.name,
            outcome="refused",
            details=details | {"why": why},
        )
        return Failure(ErrorCode.UNAUTHORIZED, why)
    await server.audit.append(
        kind="secret_master_released",
        actor=actor,
        subject=MASTER_ID.name,
        outcome="ok",
        details=details,
    )
    log.info("secret_master_released", peer=call.peer)
    master: SecretObject = server.tables.master
    return master


def _check_against(db: Database, master: SecretObject, cur: Any) -> None:
    """Raise CorruptError if a stored object does not verify under ``master``."""
    tables = SecretTables(db, master)
    names = tables.list_in(cur, "/", None, 1)
    if names:
        # the manifest's and the rows' integrity codes are checked first (CorruptError);
        # a state refusal after them (no active epoch, expired) says the key is right
        with contextlib.suppress(NotFoundError, ConflictError):
            tables.read_in(cur, names[0], None, datetime.now(UTC))


async def adopt_master(
    tao: Tao,
    db: Database,
    *,
    principal: str,
    identity: ChannelIdentity,
    guard: Guard,
    replica_of: tuple[str, int],
    revocations: CRLSource | None = None,
) -> bool:
    """Get the master key from the replica at ``replica_of`` if this server's principal
    holds no copy while others do; seal it with ``tao`` and store the sealed copy.
    True if a copy was stored; False if there was nothing to do. Raises (and stores
    nothing) if the replica refuses or is not one the guard lets hold the key, or the
    key it sends does not verify against the database."""
    sealed, holders = await db.transaction(
        lambda cur: SecretTables.sealed_master_in(db, cur, principal), write=False
    )
    if sealed is not None or holders == 0:
        return False
    host, port = replica_of
    probe = await open_channel(host, port, identity, revocations=revocations)
    try:
        peer = probe.peer.principal
    finally:
        await probe.aclose()
    if peer is None or not may_hold_master(guard, peer):
        raise AuthorizationError(
            f"the server at {host}:{port} ({peer}) is not one the guard lets hold the master key"
        )
    async with connect(replica_of, identity, revocations=revocations, server=peer) as store:
        try:
            master = await store.read(MASTER_ID.name)
        except NotFoundError:
            raise ConfigError(f"the server at {host}:{port} serves no master key") from None
    if master.id != MASTER_ID or not master.is_key:
        raise AuthenticationError(f"the server at {host}:{port} sent something not a master key")
    try:
        await db.transaction(lambda cur: _check_against(db, master, cur), write=False)
    except CorruptError as exc:
        raise AuthenticationError(
            f"the master key from {host}:{port} does not open the database's objects: {exc}"
        ) from None
    blob = await tao.seal(encode_object(master), "self")
    stored: bool = await db.transaction(
        lambda cur: SecretTables.add_sealed_master_in(db, cur, principal, blob)
    )
    log.info("secret_master_adopted", source=f"{host}:{port}", stored=stored)
    return stored
