"""``taonet audit verify``: prove that an audit log was not edited, cut or reordered.

Reads the chain (SQLite file or PostgreSQL URL) without changing it, recomputes
every entry's hash and link, and checks every checkpoint's signature: against the
domain's policy key with ``--domain`` (the domain service signs with it), against
the keys given with ``--key``, or, with neither, only against the key each
checkpoint names (which shows the log is self-consistent, not who signed it).
Prints what it verified (entries, checkpoints, head) or the first bad entry and
why; a log that fails is *refused* (exit 4).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Final

import trio

from taonet.audit import AuditError, ChainSummary
from taonet.cli._domain_cmd import add_domain_option, audit_path, domain_dir
from taonet.cli._failures import NotFoundError, UsageError, is_missing
from taonet.cli._output import add_output_option, emit
from taonet.crypto import Verifier
from taonet.domain import Domain
from taonet.files import read_file

#: Longest public key file read for --key.
_MAX_KEY_FILE: Final = 64 * 1024


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
        "--key",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="a public key (PEM or DER SubjectPublicKeyInfo) trusted to sign checkpoints;"
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


def _target(args: argparse.Namespace) -> tuple[str, Domain | None]:
    domain = None
    if args.domain is not None:
        domain = Domain.load(domain_dir(args))
    if args.db is not None:
        url: str = args.db
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


async def _run(url: str, trusted: list[Verifier] | None) -> tuple[str, ChainSummary | None]:
    from taonet_services.storage import AuditStore, Database

    db = await Database.open(url, pool_size=1)
    try:
        store = AuditStore(db)
        if not await store.chain_exists():
            return db.where, None
        try:
            return db.where, await store.verify(trusted)
        except AuditError as exc:
            raise AuditError(
                f"audit log {db.where}: {exc}", seq=exc.seq, reason=exc.reason
            ) from None
    finally:
        await db.aclose()


def _verify(args: argparse.Namespace) -> int:
    url, domain = _target(args)
    keys = [_load_key(path) for path in args.key]
    trusted: list[Verifier] | None = None
    signers = []
    if domain is not None or keys:
        trusted = list(keys)
        signers = [f"key {i + 1} (--key)" for i in range(len(keys))]
        if domain is not None:
            trusted.append(domain.policy_verifier)
            signers.append("the domain's policy key")
    where, summary = trio.run(_run, url, trusted)
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
        if unsigned and summary.checkpoints:
            print(
                f"entries {summary.last_checkpoint_seq + 1} to {summary.head_seq} are after the"
                " last checkpoint: linked, not yet signed"
            )

    emit(args, document, text)
    return 0
