"""The secret server as a Tao program: provisioned like simpleserver, its master key sealed.

:func:`run_secret_server` takes the program's :class:`~taonet.hosts.Tao` (its host's,
via :func:`taonet.hosts.parent` when hosted, or a soft host's, as ``taonet demo``
runs its programs) and:

1. keeps the domain's CRL current from the domain service (cached in the state
   directory, for a restart while the domain service is down);
2. provisions its channel identity (or unseals it) with
   :func:`taonet.provision.load_or_provision` (state in ``STATE/secret-server.sealed``)
   and writes its program certificate, which is public, to ``STATE/secret-server.crt``
   (its key signs the audit checkpoints: ``taonet audit verify --cert``);
3. opens the database (default ``sqlite:///<domain>/secrets.db``) and its tables;
4. gets the master key: unseals the copy sealed for its own principal in
   ``secret_master``; on the very first start (no server holds one) makes a random
   key, seals it with its Tao and stores only the sealed blob. A server whose
   principal holds no copy while others do gets it from the running replica
   ``replica_of`` over a Tao channel, if the guard lets both hold it (``_replica``),
   and seals its own copy; without ``replica_of`` it refuses to start (never from
   disk or the database in the clear);
   then opens the audit chain in the same database, its entries MACed with a key
   derived from the master key (``SecretTables.audit_mac_key``; replicas share it and
   check each other's entries; an entry anyone else appended is refused, see
   ``taonet_services._audit_log``);
5. with ``extras``, prepares the extensions (``_extras``: operator requests, grants,
   watch, the master key for replicas) and runs their background tasks;
6. serves over :func:`~taonet.channel.serve_channels` with ``revocations=``, the guard
   following the domain's signed configuration (``_domain_watch``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from taonet import CodecError, ConfigError, HostError, TaoError, auth
from taonet.domain import Domain, measure_file, program_subprin
from taonet.files import atomic_write
from taonet.hosts import Tao
from taonet.protected import SecretObject, decode_object, encode_object
from taonet.provision import RevocationWatcher, load_or_provision
from taonet.secrets import Op
from taonet_services.metrics import ServiceMetrics
from taonet_services.secret_server._anonymous import AnonymousLimits
from taonet_services.secret_server._cache import ObjectCache
from taonet_services.secret_server._domain_watch import GuardReloader, audit_reload
from taonet_services.secret_server._extras import prepare_extras
from taonet_services.secret_server._replica import adopt_master
from taonet_services.secret_server._service import (
    SEND_TIMEOUT,
    AuthorizeHook,
    ChangeHook,
    ChangeInHook,
    Extension,
    OperatorAuthenticator,
    SecretServer,
)
from taonet_services.secret_server._store import MASTER_ID, SecretTables, new_master_key
from taonet_services.storage import AuditStore, Database

__all__ = [
    "CERT_FILE",
    "DB_FILE",
    "PROGRAM_FILE",
    "STATE_FILE",
    "Running",
    "default_db_url",
    "load_or_make_master",
    "program_name",
    "run_secret_server",
]

#: The default database, in the domain directory.
DB_FILE: Final = "secrets.db"
#: The sealed channel identity, in the state directory.
STATE_FILE: Final = "secret-server.sealed"
#: The server's program certificate (PEM, public), in the state directory: its key
#: signs the audit chain's checkpoints (``taonet audit verify --cert``).
CERT_FILE: Final = "secret-server.crt"
#: The file whose hash names the secret server on a soft host (this module).
PROGRAM_FILE: Final = Path(__file__)


def default_db_url(domain_dir: str | Path) -> str:
    """``sqlite:///<domain>/secrets.db``."""
    return f"sqlite:///{Path(domain_dir).resolve() / DB_FILE}"


def program_name() -> auth.SubPrin:
    """``Program([sha256 of this module])``: the secret server's name on a soft host."""
    return program_subprin(measure_file(PROGRAM_FILE))


async def load_or_make_master(tao: Tao, db: Database, principal: str) -> SecretObject:
    """The master key sealed for ``principal`` in ``db``; made on the first start."""
    sealed, holders = await db.transaction(
        lambda cur: SecretTables.sealed_master_in(db, cur, principal), write=False
    )
    if sealed is None:
        if holders:
            raise ConfigError(
                f"the secret server's master key is held by {holders} other server"
                f" principal(s), not by {principal}: transfer it from a running replica"
            )
        master = new_master_key()
        blob = await tao.seal(encode_object(master), "self")
        stored = await db.transaction(
            lambda cur: SecretTables.add_sealed_master_in(db, cur, principal, blob)
        )
        if stored:
            return master
        sealed, _ = await db.transaction(
            lambda cur: SecretTables.sealed_master_in(db, cur, principal), write=False
        )
        assert sealed is not None  # another replica of this principal stored it first
    try:
        data, policy = await tao.unseal(sealed)
    except HostError as exc:
        raise HostError(
            f"cannot unseal the secret server's master key (sealed by another program?): {exc}"
        ) from None
    if policy != "self":
        raise HostError(f"the master key was sealed under policy {policy!r}, expected 'self'")
    try:
        master = decode_object(data)
    except CodecError as exc:
        raise ConfigError(f"the sealed master key does not decode: {exc}") from None
    if master.id != MASTER_ID or not master.is_key:
        raise ConfigError("the sealed master key is not a master key")
    return master


def _given(hooks: dict[str, Any]) -> dict[str, Any]:
    return {name: hook for name, hook in hooks.items() if hook is not None}


class Running:
    """What :func:`run_secret_server` hands to ``task_status``: the server and its listeners."""

    def __init__(self, server: SecretServer, listeners: list[trio.SocketListener]) -> None:
        self.server = server
        self.listeners = listeners

    @property
    def port(self) -> int:
        return int(self.listeners[0].socket.getsockname()[1])


async def run_secret_server(
    tao: Tao,
    *,
    domain: Domain,
    state_dir: Path,
    domain_service: tuple[str, int],
    listen: tuple[str, int] = ("127.0.0.1", 0),
    db_url: str | None = None,
    say: Callable[[str], None] = lambda _: None,
    on_change: ChangeHook | None = None,
    change_in: ChangeInHook | None = None,
    authenticate_operator: OperatorAuthenticator | None = None,
    also_authorized: AuthorizeHook | None = None,
    release_master: Extension | None = None,
    extensions: Mapping[Op, Extension] | None = None,
    extras: bool = True,
    replica_of: tuple[str, int] | None = None,
    send_timeout: float = SEND_TIMEOUT,
    anonymous: AnonymousLimits | None = None,
    metrics: ServiceMetrics | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Provision, get the master key, serve until cancelled (see the module docstring).

    The hooks are :class:`SecretServer`'s (see its module). With ``extras`` (the
    default) the server also serves operator requests, grants, watch and the master
    key for replicas (``_extras``); hooks given here take their place. ``replica_of``:
    a running replica to get the master key from, if this server holds no copy.
    ``anonymous``: the limits on channels without a program certificate (``_anonymous``).
    ``metrics``: where the server counts its requests, channels, handshakes and audit
    writes (:class:`~taonet_services.metrics.ServiceMetrics`; serving them is the
    caller's, e.g. with :func:`~taonet_services.metrics.serve_metrics`).
    """
    await trio.Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    async with trio.open_nursery() as nursery:
        crl = RevocationWatcher(domain.policy_cert, domain_service, cache=state_dir / "crl.der")
        await nursery.start(crl.run)
        provisioned = await load_or_provision(
            tao,
            state_dir / STATE_FILE,
            policy_cert=domain.policy_cert,
            domain_service=domain_service,
            on_step=say,
            revocations=crl,
        )
        principal = str(provisioned.principal)
        certificate = provisioned.identity.certificate
        if certificate is not None:  # public: what `taonet audit verify --cert` trusts
            pem = x509.load_der_x509_certificate(certificate.der).public_bytes(
                serialization.Encoding.PEM
            )
            await trio.to_thread.run_sync(
                functools.partial(atomic_write, state_dir / CERT_FILE, pem, mode=0o644)
            )
        db = await Database.open(db_url or default_db_url(domain.path))
        audit: AuditStore | None = None
        cache: ObjectCache | None = None
        try:
            await db.transaction(lambda cur: SecretTables.create_tables_in(db, cur))
            if replica_of is not None:
                await adopt_master(
                    tao,
                    db,
                    principal=principal,
                    identity=provisioned.identity,
                    guard=domain.guard,
                    replica_of=replica_of,
                    revocations=crl,
                )
            master = await load_or_make_master(tao, db, principal)
            tables = SecretTables(db, master)
            cache = ObjectCache.open(db)  # SQLite: verified objects, checked at each hit
            # Entries MACed with a key of the master key's (replicas share it): an entry
            # appended by anyone else is refused before the server appends after it.
            audit = await AuditStore.open(
                db, signer=provisioned.identity.signer, mac_key=tables.audit_mac_key
            )
            given = {
                "on_change": on_change,
                "change_in": change_in,
                "authenticate_operator": authenticate_operator,
                "also_authorized": also_authorized,
                "release_master": release_master,
                "extensions": extensions,
            }
            added = None
            if extras:
                added = await prepare_extras(
                    db,
                    policy_key=domain.policy_verifier,
                    principal=provisioned.principal,
                    master=master,
                    db_url=db_url,
                    operators=authenticate_operator is None,
                )
            options = {**(added.server_options() if added else {}), **_given(given)}
            server = SecretServer(
                tables,
                audit,
                domain.guard,
                provisioned.identity,
                revocations=crl,
                send_timeout=send_timeout,
                anonymous=anonymous,
                cache=cache,
                metrics=metrics,
                **options,
            )
            reloader = GuardReloader(
                domain,
                functools.partial(setattr, server, "guard"),
                report=audit_reload(server.record_audit),
            )
            server.refresh_guard = reloader.fresh
            await nursery.start(reloader.run)
            if added is not None:
                await nursery.start(added.run, server)
            host, port = listen
            listeners = await nursery.start(functools.partial(server.serve, port, host=host))
            task_status.started(Running(server, listeners))
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if audit is not None:  # entries written last get a signed checkpoint
                        with contextlib.suppress(TaoError):
                            await audit.checkpoint()
                finally:
                    if cache is not None:
                        cache.close()
                    await db.aclose()
