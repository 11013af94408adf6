"""``taonet audit verify``: prove that an audit log was not edited, cut or reordered.

Reads the chain (SQLite file or PostgreSQL URL) without changing it, recomputes
every entry's hash and link, and checks every checkpoint's signature: against the
domain's policy key with ``--domain`` (the domain service signs with it), against
the keys given with ``--key`` and those of the program certificates given with
``--cert`` (a secret server signs with its own key: its certificate is in its state
directory; each must verify against ``--domain``'s policy key and not be revoked
in the domain's record), or, with neither, only against the key each
checkpoint names (which shows the log is self-consistent, not who signed it).
Prints what it verified (entries, checkpoints, head) or the first bad entry and
why; a log that fails is *refused* (exit 4).

``--cert`` is taken only for a principal that holds a row of the database's
``secret_master`` (a secret server of that database keeps its sealed copy of the
master key there): every program of the domain has a certificate that verifies, and
a client's must not vouch for the server's checkpoints. The principal of each
``--cert`` trusted is printed.

``--against-rows`` (a secret server's database: ``--db``, or ``DIR/secrets.db`` with
``--domain``) needs the server's checkpoint key trusted (``--cert`` or ``--key``; without,
it is a usage error: a chain rewritten and signed again by anyone would pass). Once
the chain and its checkpoints verified, it replays the chain's changes and releases
and holds them against the rows the database holds, in the same snapshot
(:class:`taonet.audit.RowAudit`): a row whose tag is not that of the last audited
write, create or rotation of its name and epoch (``rolled_back``: an older, genuine
copy of the row put back with its manifest, which the server serves as it cannot
tell it from the latest), a row no audited change made (``unaudited_row``), a row the
chain says exists that is gone without an audited delete (``deleted_unaudited``), a
release whose tag is not that of the last audited change before it, or that was
served under a retired key epoch (``served_rollback``: the rolled-back version went
out), a release of an id the chain never created or deleted (``served_unaudited``), a
row (or a row gone) that agrees with the chain only through entries after the last
trusted checkpoint (``unverifiable``: entry hashes use no key, so anyone who can write
the database can append entries that link; a server signs a checkpoint when it
stops, so a stopped server's log is covered whole), and a row whose columns are not
of their types (``corrupt_row``: SQLite keeps a text tag or a BLOB name it is given).
Each is one line (the first :data:`MAX_REPORTED`, then counts by kind; ``-o json``:
the same as a document); any of them is *refused* (exit 4), like a chain that fails.
Entries and rows are read a page at a time (on SQLite, rows keyed by a text name and
an integer epoch, in that order; the others are counted as corrupt): the memory held
is one small record per name and epoch. A row edited without the master key fails
its MAC and is never served: the secret server reports it (``corrupt``) on the next
read of it; this check looks only at which version of a row is there.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Final

import trio

from taonet.audit import AuditError, AuditReason, ChainSummary, RowAudit, RowVersion, bounded
from taonet.cli._domain_cmd import add_domain_option, audit_path, domain_dir
from taonet.cli._failures import NotFoundError, RefusedError, UsageError, is_missing
from taonet.cli._output import add_output_option, emit
from taonet.crypto import Verifier
from taonet.domain import Domain
from taonet.files import read_file
from taonet.protected import MAX_NAME_BYTES

#: Longest public key file read for --key.
_MAX_KEY_FILE: Final = 64 * 1024
#: Most mismatches --against-rows reports one by one (then only counted).
MAX_REPORTED: Final = 100
#: Longest name (characters) and tag (bytes) of a row the secret server can have
#: written; a longer one is reported corrupt, not held (nor kept) whole.
_MAX_NAME_CHARS: Final = 4 * MAX_NAME_BYTES
_MAX_TAG: Final = 64
#: Rows and entries read per query by --against-rows.
_PAGE: Final = 1000
#: The secret server's rows, a page at a time in (name, epoch) order.
_ROWS_QUERY: Final = (
    "SELECT name, epoch, protector_name, protector_epoch, tag FROM secret_objects"
    " WHERE name > ? OR (name = ? AND epoch > ?) ORDER BY name, epoch LIMIT ?"
)
#: SQLite keeps a value of any type in any column: only rows keyed by a text name and
#: an integer epoch are paged (in the order of that key); the others are corrupt.
_SQLITE_ROWS_QUERY: Final = (
    "SELECT name, epoch, protector_name, protector_epoch, tag FROM secret_objects"
    " WHERE typeof(name) = 'text' AND typeof(epoch) = 'integer'"
    " AND (name > ? OR (name = ? AND epoch > ?)) ORDER BY name, epoch LIMIT ?"
)
_SQLITE_BADLY_KEYED: Final = (
    "SELECT substr(name, 1, 300), epoch FROM secret_objects"
    " WHERE NOT (typeof(name) = 'text' AND typeof(epoch) = 'integer') LIMIT ?"
)
_SQLITE_BADLY_KEYED_COUNT: Final = (
    "SELECT count(*) FROM secret_objects"
    " WHERE NOT (typeof(name) = 'text' AND typeof(epoch) = 'integer')"
)


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify audit logs (hash chains with signed checkpoints)")
    cmds = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = cmds.add_parser(
        "verify",
        help="check that an audit log was not edited, cut or reordered",
        description=(
            "Recompute every entry's hash and link and check every checkpoint's signature."
            " Entries after the last checkpoint are linked but not signed: a log cut there"
            " cannot be told from one that stopped there (services checkpoint on shutdown)."
            " With --against-rows (a secret server's database), then hold the chain's last"
            " audited change of every name and epoch, and every release, against the rows"
            " the database holds: a row rolled back to an older genuine copy, a row no"
            " audited change made, a row deleted without an audited delete, a"
            " rolled-back version served, a row that agrees with the chain only through"
            " entries no trusted checkpoint signs (unverifiable) and a row whose columns"
            " are not of their types (corrupt_row) are each one line, and fail the check."
            " --against-rows needs the server's checkpoint key trusted (--cert or --key)."
        ),
    )
    verify.add_argument(
        "--db",
        metavar="URL|PATH",
        help="the log: an SQLite file or sqlite:///path, or postgresql://... "
        "(default with --domain: the domain service's audit.sqlite)",
    )
    add_domain_option(verify)
    verify.add_argument(
        "--against-rows",
        action="store_true",
        help="a secret server's database (default with --domain: its secrets.db): also"
        " compare the audited writes, deletes, rotations and releases with the rows it"
        " holds; needs --cert STATE/secret-server.crt or --key",
    )
    verify.add_argument(
        "--key",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="a public key (PEM or DER SubjectPublicKeyInfo) trusted to sign checkpoints;"
        " may be repeated",
    )
    verify.add_argument(
        "--cert",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="a program certificate (PEM or DER; a secret server writes its own as"
        " STATE/secret-server.crt) whose key is trusted to sign checkpoints once it"
        " verifies against --domain's policy key, the domain has not revoked it, and its"
        " principal holds a copy of the database's master key (secret_master);"
        " may be repeated",
    )
    add_output_option(verify)
    verify.set_defaults(func=_verify)


def _load_key(path: Path) -> Verifier:
    from cryptography.hazmat.primitives import serialization

    if is_missing(path):
        raise NotFoundError(f"--key {path}: no such file")
    data = read_file(path, limit=_MAX_KEY_FILE)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            data = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return Verifier.from_der(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--key {path}: not a public key: {exc}") from None


def _load_cert(path: Path, domain: Domain | None) -> tuple[Verifier, str]:
    """The key of the program certificate at ``path`` and the principal it names, once
    it verifies against ``domain`` (required) and is not in its revocation record.
    That it is the secret server's is checked against the database by
    :func:`_check_servers`."""
    import time

    from taonet import TaoError, certs
    from taonet.domain import RevocationRecord

    if domain is None:
        raise UsageError("--cert needs --domain (the certificate must chain to its policy key)")
    if is_missing(path):
        raise NotFoundError(f"--cert {path}: no such file")
    data = read_file(path, limit=_MAX_KEY_FILE)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        # Checkpoints are dated; the certificate is checked as of now, like a channel's.
        program = certs.verify_program_certificate(
            domain.policy_anchor, data, now_ns=time.time_ns()
        )
        revoked = RevocationRecord.load(domain.path).revoked
    except (ValueError, TaoError) as exc:
        raise UsageError(f"--cert {path}: {bounded(str(exc), 300)}") from None
    if program.serial in revoked:
        raise UsageError(f"--cert {path}: the domain revoked it (serial {program.serial})")
    return Verifier.from_der(program.public_key_der), str(program.principal)


def _target(args: argparse.Namespace) -> tuple[str, Domain | None]:
    domain = None
    if args.domain is not None:
        domain = Domain.load(domain_dir(args))
    if args.db is not None:
        url: str = args.db
    elif domain is not None and args.against_rows:
        from taonet_services.secret_server import DB_FILE

        url = str(domain.path / DB_FILE)
    elif domain is not None:
        url = str(audit_path(domain.path))
    else:
        raise UsageError("no log: give --db URL|PATH or --domain DIR (or set TAO_DOMAIN)")
    if "://" not in url or url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
        if is_missing(path):
            raise NotFoundError(f"no audit log at {path}: no such file")
        url = os.path.abspath(path)
    return url, domain


def _check_servers(cur: Any, dialect: str, where: str, programs: list[tuple[Path, str]]) -> None:
    """Refuse a --cert whose principal holds no copy of this database's master key.

    Every program of the domain has a certificate that verifies; only a secret
    server of this database holds a row of ``secret_master`` (its sealed copy of the
    master key), so the certificate of another program (a client's) is not taken
    as the signer of this database's checkpoints.
    """
    if not programs:
        return
    if dialect == "sqlite":
        cur.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            ("secret_master",),
        )
    else:
        cur.execute("SELECT (to_regclass('secret_master') IS NOT NULL)::int")
    servers: set[str] = set()
    if int(cur.fetchone()[0]):
        cur.execute("SELECT principal FROM secret_master")
        servers = {row[0] for row in cur.fetchall() if isinstance(row[0], str)}
    for path, principal in programs:
        if principal not in servers:
            raise RefusedError(
                f"--cert {path}: {_printable(principal, 200)} is not a secret server of"
                f" {where} (it holds no copy of its master key in secret_master): only the"
                " server's own certificate (STATE/secret-server.crt) vouches for its"
                " checkpoints"
            )


async def _run(
    url: str,
    trusted: list[Verifier] | None,
    against_rows: bool,
    programs: list[tuple[Path, str]],
) -> tuple[str, ChainSummary | None, RowAudit | None]:
    from taonet_services.storage import AuditStore, Database

    db = await Database.open(url, pool_size=1)
    try:
        store = AuditStore(db)
        if not await store.chain_exists():
            return db.where, None, None

        def check(cur: Any) -> tuple[ChainSummary, RowAudit | None]:
            # One snapshot: the rows are held against the chain exactly as it was.
            _check_servers(cur, db.dialect, db.where, programs)
            summary = store.verify_in(cur, trusted)
            if not against_rows:
                return summary, None
            # Entries after the last checkpoint link, but nothing signs them.
            return summary, _against_rows(store, cur, summary.last_checkpoint_seq)

        try:
            summary, rows = await db.transaction(check, write=False, serializable=True)
        except AuditError as exc:
            hint = ""
            if exc.reason is AuditReason.UNTRUSTED_SIGNER:
                hint = (
                    "; a secret server signs with its own key: trust it with"
                    " --cert STATE/secret-server.crt"
                )
            raise AuditError(
                f"audit log {db.where}: {exc}{hint}", seq=exc.seq, reason=exc.reason
            ) from None
        return db.where, summary, rows
    finally:
        await db.aclose()


def _against_rows(store: Any, cur: Any, covered: int) -> RowAudit:
    """Replay the chain (a page at a time), then stream the secret server's rows;
    ``covered``: the last entry a trusted checkpoint signs."""
    db = store.db
    if db.dialect == "sqlite":
        cur.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            ("secret_objects",),
        )
    else:
        cur.execute("SELECT (to_regclass('secret_objects') IS NOT NULL)::int")
    if not int(cur.fetchone()[0]):
        raise NotFoundError(
            f"no secret server tables in {db.where}: --against-rows checks a secret"
            " server's database (its secrets.db, or --db URL)"
        )
    audit = RowAudit(keep=MAX_REPORTED, covered=covered)
    for entry in store.iter_entries_in(cur, page=_PAGE):
        audit.replay(entry)
    after: tuple[str, int] = ("", 0)
    sqlite = db.dialect == "sqlite"
    query = db.sql(_SQLITE_ROWS_QUERY if sqlite else _ROWS_QUERY)
    while True:
        cur.execute(query, (after[0], after[0], after[1], _PAGE))
        page = cur.fetchall()
        for row in page:
            _check_row(audit, row)
        if len(page) < _PAGE:
            break
        # The key of the last row, as stored (text and integer: the query says so).
        after = (page[-1][0], page[-1][1])
    if sqlite:
        cur.execute(_SQLITE_BADLY_KEYED_COUNT)
        bad = int(cur.fetchone()[0])
        if bad:
            cur.execute(_SQLITE_BADLY_KEYED, (MAX_REPORTED,))
            shown = cur.fetchall()
            for name, epoch in shown:
                audit.corrupt_row(
                    _printable(name if isinstance(name, str) else repr(name), 200),
                    epoch if type(epoch) is int else 0,
                    f"a row keyed by a {type(name).__name__} name and a"
                    f" {type(epoch).__name__} epoch ({_printable(repr(epoch), 40)}): not a"
                    " row the secret server wrote (text name, integer epoch)",
                )
            audit.corrupt_rows(bad - len(shown))
    audit.finish()
    return audit


def _check_row(audit: RowAudit, row: Any) -> None:
    """Hold one row against the chain, or report it corrupt if its columns are not of
    their types (SQLite keeps what it is given)."""
    name, epoch, protector_name, protector_epoch, tag = row
    if isinstance(tag, memoryview):  # psycopg's bytea
        tag = bytes(tag)
    if (
        isinstance(name, str)
        and type(epoch) is int
        and isinstance(protector_name, str)
        and type(protector_epoch) is int
        and isinstance(tag, bytes)
    ):
        if max(len(name), len(protector_name)) <= _MAX_NAME_CHARS and 0 < len(tag) <= _MAX_TAG:
            audit.check_row(RowVersion(name, epoch, protector_name, protector_epoch, tag))
            return
        audit.corrupt_row(
            _printable(name, 200),
            epoch,
            f"a name of {len(name)} characters, a protector name of {len(protector_name)}"
            f" or a tag of {len(tag)} bytes: not a row the secret server wrote (at most"
            f" {_MAX_NAME_CHARS} characters, tags of 1 to {_MAX_TAG} bytes)",
        )
        return
    audit.corrupt_row(
        _printable(name if isinstance(name, str) else repr(name), 200),
        epoch if type(epoch) is int else 0,
        "a column is not of its type (protector_name "
        f"{type(protector_name).__name__}, protector_epoch {type(protector_epoch).__name__},"
        f" tag {type(tag).__name__}): not a row the secret server wrote",
    )


def _printable(text: str, limit: int = 300) -> str:
    """Text from the database as one safe line: control characters escaped, bounded."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return bounded(shown, limit)


def _verify(args: argparse.Namespace) -> int:
    if args.against_rows and not (args.key or args.cert):
        raise UsageError(
            "--against-rows needs the secret server's checkpoint key trusted: give --cert"
            " STATE/secret-server.crt (with --domain) or --key FILE (a chain rewritten and"
            " signed by any other key would pass otherwise)"
        )
    url, domain = _target(args)
    keys = [_load_key(path) for path in args.key]
    programs = [_load_cert(path, domain) for path in args.cert]
    trusted: list[Verifier] | None = None
    signers = []
    if domain is not None or keys:
        trusted = list(keys) + [key for key, _ in programs]
        signers = [f"key {i + 1} (--key)" for i in range(len(keys))]
        signers += [
            f"the program certificate of {_printable(name)} (--cert)" for _, name in programs
        ]
        if domain is not None:
            trusted.append(domain.policy_verifier)
            signers.append("the domain's policy key")
    named = [(path, name) for path, (_, name) in zip(args.cert, programs, strict=True)]
    where, summary, rows = trio.run(_run, url, trusted, args.against_rows, named)
    if summary is None:
        raise NotFoundError(
            f"no audit chain in {where} (a domain audit log of the first layout is carried"
            " over when the domain service next opens it)"
        )
    unsigned = summary.head_seq - summary.last_checkpoint_seq
    document = {
        "log": where,
        "verified": True,
        "entries": summary.entries,
        "head_seq": summary.head_seq,
        "head_hash": summary.head_hash.hex(),
        "checkpoints": summary.checkpoints,
        "last_checkpoint_seq": summary.last_checkpoint_seq,
        "unsigned_entries": unsigned,
        "signers": list(summary.signers),
        "trusted": summary.trusted,
        "trusted_servers": [
            {"cert": str(path), "principal": bounded(name, 1100)} for path, name in named
        ],
    }
    if rows is not None:
        document["rows"] = {
            "rows": rows.rows,
            "releases_checked": rows.releases_checked,
            "match": rows.total == 0,
            "mismatches": rows.total,
            "by_kind": {kind.value: n for kind, n in rows.counts.items()},
            "reported": [
                {
                    "kind": m.kind.value,
                    "name": bounded(m.name, 1100),
                    "epoch": m.epoch,
                    "seq": m.seq,
                    "detail": m.detail,
                }
                for m in rows.mismatches
            ],
        }

    def text() -> None:
        print(f"verified {where}: {summary.entries} entries, {summary.checkpoints} checkpoints")
        print(f"head: entry {summary.head_seq}, sha256 {summary.head_hash.hex()}")
        if summary.checkpoints:
            by = ", ".join(signers) if summary.trusted else "the keys they name (not trusted:"
            if not summary.trusted:
                by += " give --domain or --key)"
            print(f"signed up to entry {summary.last_checkpoint_seq}, checked against {by}")
        else:
            print("no checkpoint: nothing is signed, a log cut anywhere would not be noticed")
            # (With a checkpoint, the line above names them.)
            for path, name in named:
                print(f"trusted secret server (--cert {path}): {_printable(name)}")
        if unsigned and summary.checkpoints:
            print(
                f"entries {summary.last_checkpoint_seq + 1} to {summary.head_seq} are after the"
                " last checkpoint: linked, not yet signed"
            )

        if rows is not None:
            print(
                f"rows: {rows.rows} rows and {rows.releases_checked} releases held against"
                f" the chain: {rows.total or 'no'} mismatches"
            )
            for m in rows.mismatches:
                print(f"{m.kind.value} {_printable(m.name)}#{m.epoch}: {_printable(m.detail, 500)}")
            if rows.total > len(rows.mismatches):
                counts = ", ".join(f"{k.value} {n}" for k, n in rows.counts.items() if n)
                print(f"... {rows.total - len(rows.mismatches)} more not shown ({counts})")

    emit(args, document, text)
    if rows is not None and rows.total:
        first = rows.mismatches[0]
        raise AuditError(
            f"audit log {where}: the rows do not match the chain: {rows.total} mismatches"
            f" (first: {first.kind.value} {_printable(first.name, 200)}#{first.epoch})",
            seq=first.seq,
            reason=AuditReason.ROWS_MISMATCH,
        )
    return 0
