"""Operator requests: accepted as the policy key's, once, within their window.

``taonet secret ...`` signs each request with the domain's policy key
(:func:`taonet.secrets.sign_operator_request`). :class:`OperatorGate` is the secret
server's ``authenticate_operator`` hook: it checks the credential
(:func:`taonet.secrets.verify_operator_request`: this domain's policy key, this
very request, this server's principal and store id, a window of at most 300 s that
holds now) and then
spends its nonce: a row in ``secret_operator_nonces`` inserted or refused in one
statement (the primary key decides), so a credential is accepted once by one
replica of all those sharing the database, and a restart forgets nothing. A nonce
is kept until its window ended :data:`NONCE_MARGIN_NS` ago (replicas' clocks may
differ by that much; a credential older than its window is refused as expired
anyway) and then deleted, so the table holds only the nonces of the last minutes:
its size is bounded by what policy-key holders sign, nobody else can add a row.
The gate also keeps the nonces it accepted in memory until they expire (at most
:data:`MAX_REMEMBERED`, the oldest dropped first), and refuses those before asking
the table: rows deleted by someone with write access to the database do not reopen
a credential to a replay on this server (other replicas rely on the table).

The store id (:func:`load_store_id`) is 16 random bytes made when the database is
first set up, one row of ``secret_store_id`` with a MAC under the master key (so
nobody without that key can put another store's id there); a database made before
it existed gets one on the next start. Every replica of one database reads the same id (they serve
the same objects and share the nonce table), every other database has another, so
a credential made for one instance of the server (a test server) is refused by
another instance of the same program (production) as ``WRONG_STORE``. A server
reads the id once, at start, and keeps it: a row edited while it runs changes
nothing it accepts or announces; at the next start a row whose MAC does not verify
under the master key stops the server (ConfigError), so an id copied from another
database is never taken, then or later.

A request accepted is authorized as the policy key's principal (everything: see
:meth:`OperatorGate.also_authorized`). Every refusal raises an
:class:`~taonet.secrets.OperatorError` saying why; the server audits it.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from taonet import ConfigError, auth
from taonet.crypto import Verifier
from taonet.protected import SecretObject
from taonet.secrets import (
    STORE_ID_BYTES,
    OperatorError,
    OperatorReason,
    Request,
    op_of,
    verify_operator_request,
)
from taonet_services.storage import Database, StorageError, StorageReason

__all__ = ["MAX_REMEMBERED", "NONCE_MARGIN_NS", "OperatorGate", "load_store_id", "store_id_mac"]

log = structlog.get_logger(__name__)

#: How long after its window a nonce is kept (clocks of replicas may differ this much).
NONCE_MARGIN_NS: Final = 300 * 10**9
#: Nonces a gate remembers in memory (each until it expires).
MAX_REMEMBERED: Final = 100_000


def store_id_statements(db: Database) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS secret_store_id ("
        f" id INTEGER PRIMARY KEY, store_id {db.blob_type} NOT NULL, mac {db.blob_type} NOT NULL)",
    ]


def store_id_mac(master: SecretObject, store_id: bytes) -> bytes:
    """The MAC that binds ``store_id`` to the database's master key (HMAC-SHA256 under a
    key derived from it for this use alone)."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"taonet secret-server store id v1"
    ).derive(master.value)
    return hmac.new(key, b"store id\0" + store_id, hashlib.sha256).digest()


async def load_store_id(db: Database, master: SecretObject) -> bytes:
    """The id of the store ``db`` holds: made at random (:data:`STORE_ID_BYTES`) by the
    first server to start on it, read by every later one (an insert that does nothing
    when the row exists, then a read, in one transaction, under an advisory lock on
    PostgreSQL: replicas starting at once all read the one that committed).

    The row carries a MAC under the master key (:func:`store_id_mac`), which every
    replica of the database holds and nothing else does, so an id written by someone
    without it (another database's row copied in, so that this server would take that
    store's credentials and grants after a restart) is refused: ConfigError, as for a
    row that is not a store id."""
    fresh = os.urandom(STORE_ID_BYTES)

    def load(cur: Any) -> tuple[bytes, bytes]:
        if db.dialect == "postgresql":  # replicas starting at once create the table once
            cur.execute("SELECT pg_advisory_xact_lock(7461758)")
        for statement in store_id_statements(db):
            cur.execute(statement)
        cur.execute(
            db.sql(
                "INSERT INTO secret_store_id (id, store_id, mac) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO NOTHING"
            ),
            (fresh, store_id_mac(master, fresh)),
        )
        cur.execute("SELECT store_id, mac FROM secret_store_id WHERE id = 1")
        row = cur.fetchone()
        return (b"", b"") if row is None else (bytes(row[0]), bytes(row[1]))

    store_id, mac = await db.transaction(load)
    if len(store_id) != STORE_ID_BYTES:
        raise ConfigError(
            f"the secret server's store id in {db.where} is {len(store_id)} bytes,"
            f" not {STORE_ID_BYTES} (the secret_store_id row was edited)"
        )
    if not hmac.compare_digest(mac, store_id_mac(master, store_id)):
        raise ConfigError(
            f"the secret server's store id in {db.where} was not written with this"
            " database's master key (the secret_store_id row was edited or copied from"
            " another database): restore the row, or delete it to make a new store id"
            " (credentials and grants made for the old one are then refused)"
        )
    return store_id


def nonce_table_statements(db: Database) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS secret_operator_nonces ("
        f" nonce {db.blob_type} PRIMARY KEY, expires_ns BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS secret_operator_nonces_expiry"
        " ON secret_operator_nonces (expires_ns)",
    ]


class OperatorGate:
    """Checks operator credentials for one server (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        policy_key: Verifier,
        server: auth.Prin,
        store_id: bytes,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db: Final = db
        self.policy_key: Final = policy_key
        self.policy_principal: Final = auth.key_principal(policy_key.public_key_der())
        self.server: Final = server
        #: The store id read at start (see :func:`load_store_id`), kept for good.
        self.store_id: Final = bytes(store_id)
        self._clock = clock
        #: nonce -> expiry (ns), oldest first: the nonces this gate accepted.
        self._spent: collections.OrderedDict[bytes, int] = collections.OrderedDict()

    async def create_tables(self) -> None:
        def create(cur: Any) -> None:
            for statement in nonce_table_statements(self.db):
                cur.execute(statement)

        await self.db.transaction(create)

    def also_authorized(self, principal: auth.Prin, op: str, name: str) -> bool:
        """The policy key (a verified operator request) may do everything."""
        return principal == self.policy_principal

    async def __call__(self, request: Request) -> auth.Prin:
        """The principal ``request`` is authorized as (the policy key's), or raise
        OperatorError (a replay, a bad or stale credential)."""
        now = self._clock()
        claim = verify_operator_request(
            request,
            policy_key=self.policy_key,
            server=self.server,
            store=self.store_id,
            now_ns=now,
        )
        expires = claim.not_after_ns + NONCE_MARGIN_NS
        nonce = claim.nonce
        db = self.db
        spent = self._spent
        while spent and (next(iter(spent.values())) < now or len(spent) > MAX_REMEMBERED):
            spent.popitem(last=False)
        if nonce in spent:
            raise OperatorError(
                "the operator credential was used already (a replay)",
                reason=OperatorReason.REPLAYED,
            )

        def spend(cur: Any) -> bool:
            cur.execute(db.sql("DELETE FROM secret_operator_nonces WHERE expires_ns < ?"), (now,))
            cur.execute(
                db.sql(
                    "INSERT INTO secret_operator_nonces (nonce, expires_ns) VALUES (?, ?)"
                    " ON CONFLICT (nonce) DO NOTHING"
                ),
                (nonce, expires),
            )
            return bool(cur.rowcount == 1)

        try:
            fresh = await db.transaction(spend)
        except StorageError as exc:
            if exc.reason is not StorageReason.CONFLICT:
                raise
            fresh = False  # two replicas inserted it at once: the other one won
        if not fresh:
            raise OperatorError(
                "the operator credential was used already (a replay)",
                reason=OperatorReason.REPLAYED,
            )
        spent[nonce] = expires
        log.info("operator_request", op=op_of(request).name, nonce=nonce.hex())
        return self.policy_principal
