"""Grants: rights an operator gives a principal on a name prefix, signed by the policy key.

``taonet secret grant PRINCIPAL --ops Read,Write --name /app`` sends a Grant request
signed by the policy key (an operator credential). The server keeps, for each op
granted, one row of ``secret_grants(principal, name, op, proof)`` where ``proof`` is
the operator's signed request itself (the Grant request's body and its credential).
The server's authorization honours a grant in addition to the domain's guard
(:meth:`GrantBook.allows`: the principal, the op, and a name under the prefix,
segment-wise, as the guard's rights are).

A row is honoured only if its proof verifies under the domain's policy key *as a
grant of that op on that prefix to that principal*; it is checked every time the
rows are loaded (at start, after each grant, every :data:`REFRESH_INTERVAL`
seconds so that grants made through another replica take effect, and whenever the
generation row ``secret_grants_generation``, bumped in the transaction of every
grant and revocation, differs from the one loaded). When the guard says no to a
request, the server reads that row (:meth:`GrantBook.current`) and reloads if it
moved before asking the grants, so a grant or revocation made through one replica
holds on every replica of the database as soon as it committed (List and Watch
filtering use the rows loaded: at most :data:`REFRESH_INTERVAL` behind). So a row added
or edited in the database by anyone without the policy key (another principal,
another op, a wider prefix) is never honoured; it is logged (``grant_invalid``)
and audited once. ``grant --revoke`` deletes the rows of those ops.

A proof names the server the operator signed it for and the store that server
serves (its store id, see ``_operator_auth``); a row is honoured only if that store
is this database's (the id the server read at start) and that server holds a copy
of this database's master key (a replica of it: a row of ``secret_master``), so a
grant signed for another secret server and copied in is not, even one signed for
another instance of this very program (same principal) over another database.

What the signature cannot stop: someone with write access to the database can
delete grant rows (a denial, not a gain), or put back a row revoked earlier, with
its old valid proof; the audit chain records every grant and revocation, so an
audit of the log against the rows shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, Final

import attrs
import structlog
import trio

from taonet import CodecError, auth
from taonet.audit import bounded
from taonet.crypto import Verifier
from taonet.protected import ObjectId
from taonet.secrets import (
    GRANT_OPS,
    ErrorCode,
    Failure,
    Granted,
    GrantRequest,
    OperatorError,
    Request,
    Response,
    decode_request,
    encode_request,
    verify_operator_request,
)
from taonet_services.secret_server._reach import under
from taonet_services.secret_server._service import Call
from taonet_services.storage import Database

__all__ = ["REFRESH_INTERVAL", "Grant", "GrantBook", "parse_grantee"]

log = structlog.get_logger(__name__)

#: Seconds between reloads of the grants (grants made through other replicas).
REFRESH_INTERVAL: Final = 5.0
#: Most grant rows loaded (beyond them, nothing more is honoured).
MAX_GRANTS: Final = 10_000


@attrs.frozen
class Grant:
    """``principal`` may do ``op`` on ``prefix`` and the names under it. A principal
    tail (``ext.Program([h])``) stands, as in the guard's rules, for every principal
    whose extensions begin with it (that program on any host of the domain)."""

    principal: auth.Prin | auth.PrinTail
    op: str
    prefix: str

    def covers(self, principal: auth.Prin, op: str, name: str) -> bool:
        if op != self.op or not (self.prefix == "/" or ObjectId(name, 1).is_under(self.prefix)):
            return False
        if isinstance(self.principal, auth.Prin):
            return principal == self.principal
        n = len(self.principal.ext.exts)
        return n > 0 and principal.ext.exts[:n] == self.principal.ext.exts


def parse_grantee(text: str) -> auth.Prin | auth.PrinTail:
    """A grant's principal: a principal, or a tail ``ext.Program(...)``; CodecError else."""
    term = auth.parse_term(text)
    if isinstance(term, auth.Prin) or (isinstance(term, auth.PrinTail) and term.ext.exts):
        return term
    raise CodecError("a grant names a principal or a principal tail (ext.Program([...]))")


def grant_statements(db: Database) -> list[str]:
    text = "TEXT" if db.dialect == "sqlite" else 'TEXT COLLATE "C"'
    return [
        f"""CREATE TABLE IF NOT EXISTS secret_grants (
            principal {text} NOT NULL,
            name {text} NOT NULL,
            op TEXT NOT NULL,
            proof {db.blob_type} NOT NULL,
            PRIMARY KEY (principal, name, op))""",
        "CREATE TABLE IF NOT EXISTS secret_grants_generation ("
        " id INTEGER PRIMARY KEY, generation BIGINT NOT NULL)",
        "INSERT INTO secret_grants_generation (id, generation) VALUES (1, 0)"
        " ON CONFLICT (id) DO NOTHING",
    ]


def _proof(request: GrantRequest) -> bytes:
    method, body = encode_request(request)
    return method.encode() + b"\0" + body


def _check_proof(
    proof: bytes,
    policy_key: Verifier,
    principal: str,
    name: str,
    op: str,
    servers: Collection[str] | None = None,
    *,
    store: bytes,
) -> GrantRequest:
    """The signed Grant request a row's proof holds, if it grants ``op`` on ``name`` to
    ``principal`` and was signed for the store ``store`` (and for one of ``servers``,
    when given); CodecError or OperatorError otherwise."""
    method, sep, body = proof.partition(b"\0")
    if not sep:
        raise CodecError("a grant proof has no method")
    request = decode_request(method.decode("ascii", "replace"), body)
    if not isinstance(request, GrantRequest) or request.revoke:
        raise CodecError("a grant proof is not a Grant request")
    claim = verify_operator_request(
        request, policy_key=policy_key, server=None, store=store, now_ns=None
    )
    if servers is not None and str(claim.server) not in servers:
        raise CodecError("the grant was signed for a server that holds no key of this database")
    if request.principal != principal or request.name != name or op not in request.ops:
        raise CodecError("the grant row does not say what its signed request says")
    return request


class GrantBook:
    """The grants of one server: stored, checked, served (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        policy_key: Verifier,
        store_id: bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db: Final = db
        self.policy_key: Final = policy_key
        #: The store id read at start: only proofs signed for it are honoured.
        self.store_id: Final = bytes(store_id)
        self.policy_principal: Final = auth.key_principal(policy_key.public_key_der())
        self._exact: dict[auth.Prin, tuple[Grant, ...]] = {}
        self._tails: tuple[Grant, ...] = ()
        self._reported: set[tuple[str, str, str]] = set()
        self._clock = clock
        self.loaded = trio.Event()
        #: The generation of the rows loaded (bumped with every grant and revocation).
        self.generation = -1
        self._loading = trio.Lock()
        #: Where invalid rows are audited (an AuditStore; set by :meth:`run`).
        self.audit: Any = None

    async def create_tables(self) -> None:
        def create(cur: Any) -> None:
            for statement in grant_statements(self.db):
                cur.execute(statement)

        await self.db.transaction(create)

    # -- authorization --------------------------------------------------------------

    def allows(self, principal: auth.Prin, op: str, name: str) -> bool:
        """Whether a verified grant gives ``principal`` ``op`` on ``name``."""
        return any(g.covers(principal, op, name) for g in self._exact.get(principal, ())) or any(
            g.covers(principal, op, name) for g in self._tails
        )

    def reaches(self, principal: auth.Prin, op: str, prefix: str) -> bool:
        """Whether a verified grant gives ``principal`` ``op`` on ``prefix``, above it, or
        on a name under it."""
        grants = (*self._exact.get(principal, ()), *self._tails)
        return any(
            g.op == op
            and (under(g.prefix, prefix) or g.covers(principal, op, prefix))
            and g.covers(principal, op, g.prefix)
            for g in grants
        )

    # -- loading --------------------------------------------------------------------

    async def load(self, *, audit: Any = None) -> None:
        """Read the rows and keep those whose proof verifies (the others are logged,
        and audited once in ``audit``, an AuditStore, or :attr:`audit`)."""
        audit = audit if audit is not None else self.audit
        generation, servers, rows = await self.db.transaction(
            lambda cur: (_generation(cur), _servers(self.db, cur), _select(self.db, cur)),
            write=False,
            serializable=True,
        )
        exact: dict[auth.Prin, list[Grant]] = {}
        tails: list[Grant] = []
        bad: list[tuple[str, str, str, str]] = []
        for principal_text, name, op, proof in rows:
            try:
                _check_proof(
                    proof, self.policy_key, principal_text, name, op, servers, store=self.store_id
                )
                principal = parse_grantee(principal_text)
                if op not in GRANT_OPS:
                    raise CodecError(f"unknown op {op[:16]!r}")
            except (CodecError, OperatorError, ValueError) as exc:
                bad.append((principal_text, name, op, str(exc)))
                continue
            grant = Grant(principal, op, name)
            if isinstance(principal, auth.Prin):
                exact.setdefault(principal, []).append(grant)
            else:
                tails.append(grant)
        self._exact = {p: tuple(gs) for p, gs in exact.items()}
        self._tails = tuple(tails)
        self.generation = generation
        self.loaded.set()
        for principal_text, name, op, why in bad:
            key = (principal_text, name, op)
            if key in self._reported:
                continue
            self._reported.add(key)
            log.warning(
                "grant_invalid",
                principal=bounded(principal_text, 200),
                name=bounded(name, 200),
                op=bounded(op, 16),
                error=bounded(why, 300),
            )
            if audit is not None:
                await audit.append(
                    kind="secret_grant_invalid",
                    actor="database",
                    subject=bounded(name),
                    outcome="refused",
                    details={"principal": bounded(principal_text, 1000), "op": bounded(op, 16)},
                )

    async def current(self) -> None:
        """Reload if a grant or revocation was made since the last load (by any replica
        of the database): one read of the generation row when none was."""
        generation = await self.db.transaction(_generation, write=False)
        if generation != self.generation:
            async with self._loading:
                if generation != self.generation:
                    await self.load()

    async def run(
        self,
        *,
        audit: Any = None,
        interval: float = REFRESH_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load now, then again every ``interval`` seconds (until cancelled)."""
        if audit is not None:
            self.audit = audit
        await self.load(audit=audit)
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.load(audit=audit)
            except Exception as exc:  # a database hiccup: keep what we have, retry
                log.warning("grants_load_failed", error=bounded(str(exc), 300))

    # -- the Grant operation ----------------------------------------------------------

    async def serve(self, call: Call, request: Request) -> Response:
        """The Grant extension: only a verified operator request may grant or revoke."""
        if not isinstance(request, GrantRequest):
            return Failure(ErrorCode.INVALID, "not a Grant request")
        if request.operator is None or call.principal != self.policy_principal:
            return Failure(ErrorCode.UNAUTHORIZED, "only the policy key (an operator) grants")
        try:
            parse_grantee(request.principal)
        except CodecError as exc:
            return Failure(ErrorCode.INVALID, f"principal: {exc}")
        proof = _proof(request)
        db = call.server.db
        audit = call.server.audit

        def change(cur: Any) -> None:
            # Every replica checks this row before honouring a grant: a revocation holds
            # on all of them as soon as it commits.
            cur.execute("UPDATE secret_grants_generation SET generation = generation + 1")
            for op in request.ops:
                cur.execute(
                    db.sql("DELETE FROM secret_grants WHERE principal = ? AND name = ? AND op = ?"),
                    (request.principal, request.name, op),
                )
                if not request.revoke:
                    cur.execute(
                        db.sql(
                            "INSERT INTO secret_grants (principal, name, op, proof)"
                            " VALUES (?, ?, ?, ?)"
                        ),
                        (request.principal, request.name, op, proof),
                    )
            audit.append_in(
                cur,
                kind="secret_grant_revoked" if request.revoke else "secret_granted",
                actor=bounded(str(call.principal)),
                subject=bounded(request.name),
                outcome="ok",
                details={
                    "principal": bounded(request.principal, 1000),
                    "ops": ",".join(request.ops),
                    "peer": bounded(call.peer, 1000),
                },
            )

        await db.transaction(change)
        log.info(
            "grant_revoked" if request.revoke else "granted",
            principal=bounded(request.principal, 200),
            name=bounded(request.name, 200),
            ops=",".join(request.ops),
        )
        await self.load()
        return Granted()


def _servers(db: Database, cur: Any) -> frozenset[str] | None:
    """The principals of the servers that hold this database's master key (None: no
    such table here, as in tests of the grants alone)."""
    if db.dialect == "sqlite":
        cur.execute("SELECT count(*) FROM sqlite_master WHERE name = 'secret_master'")
    else:
        cur.execute("SELECT (to_regclass('secret_master') IS NOT NULL)::int")
    if not int(cur.fetchone()[0]):
        return None
    cur.execute("SELECT principal FROM secret_master")
    return frozenset(str(r[0]) for r in cur.fetchall())


def _generation(cur: Any) -> int:
    cur.execute("SELECT generation FROM secret_grants_generation WHERE id = 1")
    row = cur.fetchone()
    return -2 if row is None else int(row[0])


def _select(db: Database, cur: Any) -> list[tuple[str, str, str, bytes]]:
    cur.execute(
        db.sql("SELECT principal, name, op, proof FROM secret_grants ORDER BY principal LIMIT ?"),
        (MAX_GRANTS,),
    )
    return [(str(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in cur.fetchall()]
