"""``taonet domain directive``: sign a disclosure directive with the policy key, or show one.

Signing::

    taonet domain directive --op Read --to PRINCIPAL|--program FILE --object NAME:EPOCH
        [--until 30d] [--from WHEN] -o FILE

writes ``policy key says Op(PRINCIPAL, NAME#EPOCH)`` valid from ``--from`` (default
five minutes ago, for verifiers whose clocks lag) until ``--until`` (default 30
days; at most :data:`MAX_DAYS`; a directive without end is refused). ``--program
FILE`` names the program as the domain's Linux host names it (as ``taonet domain
policy --add-program`` does), under the host named by ``--host PRIN``, else the
running Linux host of the domain. Everything is checked before the password is
asked for.

Showing: ``taonet domain directive --show FILE`` prints the directive (operation,
delegate, object, delegator, window, signer) and checks it against the domain
(its policy key, its revocations); a directive that does not verify is printed,
then refused (exit 4).

``-o`` takes the file to write and, as for every command, ``text`` or ``json`` for
the output: ``-o FILE -o json`` (a file called ``json`` is ``-o ./json``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import time
from pathlib import Path
from typing import Any, Final

from taonet import AuthenticationError, CodecError, ConfigError, HostError, auth, certs
from taonet.cli._failures import NotFoundError, UsageError, is_missing
from taonet.cli._output import emit, iso_time
from taonet.cli._password import add_password_option, get_password
from taonet.disclosure import (
    MAX_DIRECTIVE_BYTES,
    Directive,
    DirectiveError,
    DirectiveOp,
    decode_directive,
    sign_directive,
    verify_directive,
)
from taonet.domain import Domain, RevocationRecord, program_subprin
from taonet.files import atomic_write, read_file
from taonet.protected import ObjectId

__all__ = ["DEFAULT_UNTIL", "MAX_DAYS", "register_directive"]

#: How long a directive lasts unless ``--until`` says otherwise.
DEFAULT_UNTIL: Final = "30d"
#: The longest a directive the CLI signs may last.
MAX_DAYS: Final = 366
#: How far back ``--from`` defaults to (verifiers' clocks may lag the signer's).
CLOCK_SKEW_NS: Final = 5 * 60 * 10**9
_DURATION: Final = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NS: Final = 10**9
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_FORMATS: Final = ("text", "json")


def register_directive(cmds: Any) -> None:
    """Add ``directive`` to the ``taonet domain`` subcommands."""
    from taonet.cli._domain_cmd import add_domain_option

    p = cmds.add_parser(
        "directive",
        help="sign a disclosure directive with the policy key, or show and check one",
        description="Sign a disclosure directive (the policy key says PRINCIPAL may OP the "
        "object NAME:EPOCH, from --from until --until) and write it to -o FILE; or, with "
        "--show FILE, print a directive and check it against the domain. -o also takes "
        "text or json, as for every command: -o FILE -o json.",
    )
    add_domain_option(p)
    p.add_argument("--show", metavar="FILE", type=Path, help="print and check this directive")
    p.add_argument("--op", choices=[op.value for op in DirectiveOp], help="the operation")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--to", metavar="PRINCIPAL", help="who may: a principal's name")
    who.add_argument(
        "--program",
        metavar="FILE",
        type=Path,
        help="who may: the program at FILE (a file or program directory), named as the "
        "domain's Linux host names it (see --host)",
    )
    p.add_argument(
        "--entry",
        metavar="RELPATH",
        help="with --program DIR: the file that runs in it (default __main__.py)",
    )
    p.add_argument(
        "--host",
        metavar="PRIN",
        help="with --program: the name of the host it runs on (default: the running "
        "Linux host of the domain, as taonet host show prints it)",
    )
    p.add_argument("--object", metavar="NAME:EPOCH", help="the object, e.g. /app/key:1")
    p.add_argument(
        "--until",
        metavar="WHEN",
        help=f"when it ends: a duration from now (30d, 12h, 90m, 2w) or an ISO 8601 time "
        f"(UTC unless it says); default {DEFAULT_UNTIL}, at most {MAX_DAYS} days",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="WHEN",
        help="when it starts: now, a duration from now, or an ISO 8601 time from 1970 on "
        "(default: five minutes ago, for verifiers whose clocks lag)",
    )
    p.add_argument(
        "-o",
        "--output",
        dest="outputs",
        metavar="FILE|text|json",
        action="append",
        default=[],
        help="the file to write the directive to; text (default) or json for what is "
        "printed (give both: -o FILE -o json)",
    )
    add_password_option(p)
    p.set_defaults(func=_directive)


def _directive(args: argparse.Namespace) -> int:
    from taonet.cli._domain_cmd import load_domain

    out_file = _split_outputs(args)
    if args.show is not None:
        given = [
            f"--{name}"
            for name in ("op", "to", "program", "entry", "host", "object", "until")
            if getattr(args, name) is not None
        ]
        if args.start is not None:
            given.append("--from")
        if out_file is not None:
            given.append("-o FILE")
        if given:
            raise UsageError(f"--show FILE takes none of {', '.join(given)}")
        return _show(args, load_domain(args))
    missing = [
        option
        for option, value in (
            ("--op", args.op),
            ("--to or --program", args.to or args.program),
            ("--object", args.object),
            ("-o FILE", out_file),
        )
        if not value
    ]
    if missing:
        raise UsageError(f"to sign a directive give {', '.join(missing)} (or --show FILE)")
    assert out_file is not None
    if args.program is None and (args.entry is not None or args.host is not None):
        raise UsageError("--entry and --host are for --program")
    now = time.time_ns()
    object_id = _parse_object(args.object)
    not_after = _parse_when(args.until or DEFAULT_UNTIL, now, "--until")
    not_before = (
        now - CLOCK_SKEW_NS if args.start is None else _parse_when(args.start, now, "--from")
    )
    if not_after <= now:
        raise UsageError("--until must be in the future")
    if not_after - now > MAX_DAYS * 86400 * _NS:
        raise UsageError(f"--until: a directive may last at most {MAX_DAYS} days")
    if not_before < 0:
        raise UsageError("--from must be no earlier than 1970-01-01T00:00:00Z")
    if not_before >= not_after:
        raise UsageError("--from must be before --until")
    domain = load_domain(args)
    delegate = _delegate(args, domain)
    # Everything is checked: now the password.
    signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
    raw = sign_directive(
        signer,
        op=DirectiveOp(args.op),
        delegate=delegate,
        object_id=object_id,
        not_before=not_before,
        not_after=not_after,
    )
    directive = verify_directive(raw, policy=domain.policy_anchor, now_ns=now)
    atomic_write(out_file, raw, mode=0o644)
    document = _document(directive, domain, out_file)
    emit(
        args,
        document,
        lambda: print("\n".join([f"wrote {out_file} ({len(raw)} bytes)", *_lines(document)])),
    )
    return 0


def _split_outputs(args: argparse.Namespace) -> Path | None:
    """Sort ``-o`` values into the output format (``args.output``) and the file."""
    formats = [value for value in args.outputs if value in _FORMATS]
    files = [value for value in args.outputs if value not in _FORMATS]
    if len(formats) > 1 or len(files) > 1:
        raise UsageError("-o takes one FILE and one of text or json (-o FILE -o json)")
    args.output = formats[0] if formats else "text"
    return Path(files[0]) if files else None


def _parse_object(text: str) -> ObjectId:
    name, sep, epoch = text.rpartition(":")
    if not sep or not epoch.isdigit() or len(epoch) > 10:
        raise UsageError(f"--object {text!r}: expected NAME:EPOCH, e.g. /app/key:1")
    try:
        return ObjectId(name, int(epoch))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--object {text!r}: {exc}") from None


def _parse_when(text: str, now: int, option: str) -> int:
    """``now``, a duration from now, or an ISO 8601 time (UTC unless it says), in ns."""
    if text == "now":
        return now
    match = _DURATION.fullmatch(text)
    if match:
        return now + int(match[1]) * _UNITS[match[2]] * _NS
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected a duration (30d, 12h, 90m, 45s, 2w), now, or an "
            "ISO 8601 time such as 2027-01-31T12:00:00Z (a directive must end)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    try:
        since = moment - _EPOCH  # exact, whole days, seconds and microseconds
    except OverflowError:
        raise UsageError(f"{option} {text!r}: out of range") from None
    return (since.days * 86400 + since.seconds) * _NS + since.microseconds * 1000


def _delegate(args: argparse.Namespace, domain: Domain) -> auth.Prin:
    if args.to is not None:
        try:
            return auth.parse_prin(args.to)
        except CodecError as exc:
            raise UsageError(f"--to: {exc}") from None
    from taonet.hosts.linux import (
        LinuxHostConfig,
        default_host_dir,
        host_config_at,
        program_subprin_on,
    )

    program: Path = args.program
    if not os.path.lexists(program):
        raise NotFoundError(f"--program {program}: no such file")
    where = os.environ.get("TAO_HOST")
    host_dir = Path(where) if where else default_host_dir(domain.path)
    on_host = host_config_at(host_dir)
    if on_host is None and not program.is_dir():
        if args.entry is not None:
            raise UsageError(f"--entry: {program} is a file, not a program directory")
        from taonet.domain import measure_file

        ext = program_subprin(measure_file(program))
    else:
        config = LinuxHostConfig(kind="root", guard="Liberal") if on_host is None else on_host
        ext = program_subprin_on(config, program, entry=args.entry)
    host = _host_name(args.host, host_dir)
    return host.extend(ext, domain.policy_subprin)


def _host_name(given: str | None, host_dir: Path) -> auth.Prin:
    if given is not None:
        try:
            return auth.parse_prin(given)
        except CodecError as exc:
            raise UsageError(f"--host: {exc}") from None
    import trio

    from taonet.hosts.linux import ADMIN_SOCKET, AdminClient

    async def ask() -> auth.Prin | None:
        try:
            async with AdminClient.connect(host_dir / ADMIN_SOCKET) as admin:
                name: auth.Prin = await admin.host_name()
                return name
        except HostError:
            return None

    name = trio.run(ask)
    if name is None:
        raise UsageError(
            f"--program: no Linux host runs at {host_dir} to name the program's host: give "
            "--host PRIN (its name, as 'taonet host show' prints it)"
        )
    return name


def _revoked_serials(domain: Domain, now: int) -> frozenset[int]:
    """Every serial the domain revoked: its record, and its CRL if that verifies now."""
    from taonet.cli._domain_cmd import crl_path

    serials = set(RevocationRecord.load(domain.path).revoked)
    path = crl_path(domain.path)
    if path.exists():
        try:
            crl = certs.verify_crl(
                domain.policy_anchor, read_file(path, limit=certs.MAX_CRL_BYTES), now_ns=now
            )
        except (AuthenticationError, ConfigError):
            pass  # stale or unreadable: the record above still holds every serial
        else:
            serials |= crl.serials
    return frozenset(serials)


def _show(args: argparse.Namespace, domain: Domain) -> int:
    path: Path = args.show
    if is_missing(path):
        raise NotFoundError(f"--show {path}: no such file")
    raw = read_file(path, limit=MAX_DIRECTIVE_BYTES)
    directive = decode_directive(raw)  # CodecError: not a directive at all (exit 1)
    now = time.time_ns()
    refusal: DirectiveError | None = None
    try:
        directive = verify_directive(
            raw, policy=domain.policy_anchor, now_ns=now, revoked=_revoked_serials(domain, now)
        )
    except DirectiveError as exc:
        refusal = exc
    document = _document(directive, domain, path, refusal)
    emit(args, document, lambda: print("\n".join(_lines(document))))
    if refusal is not None:
        raise refusal
    return 0


def _document(
    directive: Directive, domain: Domain, path: Path, refusal: DirectiveError | None = None
) -> dict[str, Any]:
    return {
        "file": str(path),
        "op": directive.op.value,
        "delegate": str(directive.delegate),
        "object": {"name": directive.object_id.name, "epoch": directive.object_id.epoch},
        "delegator": str(directive.delegator),
        # Only verification says who signed: never from the fields as written.
        "by_policy_key": refusal is None and directive.by_policy,
        "not_before": iso_time(directive.not_before),
        "not_before_ns": directive.not_before,
        "not_after": iso_time(directive.not_after),
        "not_after_ns": directive.not_after,
        "signer": str(directive.signer),
        "certificate_serial": None if directive.cert_serial is None else str(directive.cert_serial),
        "domain": domain.config.name,
        "verified": refusal is None,
        "reason": None if refusal is None else refusal.reason.value,
        "error": None if refusal is None else str(refusal),
    }


def _lines(document: dict[str, Any]) -> list[str]:
    obj = document["object"]
    if document["by_policy_key"]:
        who = " (the policy key)"
    elif document["verified"]:
        who = " (a program of this domain: it grants only what it owns)"
    else:
        who = ""
    serial = document["certificate_serial"]
    signer = document["signer"] + (f" (program certificate serial {serial})" if serial else "")
    check = (
        f"valid in domain {document['domain']!r}"
        if document["verified"]
        else f"REFUSED ({document['reason']}): {document['error']}"
    )
    return [
        f"op:         {document['op']}",
        f"delegate:   {document['delegate']}",
        f"object:     {obj['name']}:{obj['epoch']}",
        f"delegator:  {document['delegator']}{who}",
        f"window:     {document['not_before'] or '-'} until {document['not_after'] or 'no end'}",
        f"signer:     {signer}",
        f"check:      {check}",
    ]
