"""``taonet domain init|policy|principal|audit|revoke|crl``: create and administer a domain."""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from taonet import CodecError, ConfigError, auth, certs
from taonet.cli._password import add_password_option, get_password
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain, DomainTemplate, measure_file
from taonet.files import atomic_write

if TYPE_CHECKING:
    from taonet_services.domain_service import AuditLog

#: The revocation list ``taonet domain revoke|crl`` writes into the domain directory.
CRL_FILE: Final = "crl.der"
#: How long a CRL the CLI writes stays fresh unless told otherwise.
DEFAULT_CRL_DAYS: Final = 7
_SERIAL: Final = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]+")
_SERIAL_LIMIT: Final = 1 << 159


def audit_path(domain_dir: Path) -> Path:
    """Where the domain service keeps its audit log in a domain directory."""
    return domain_dir / "audit.sqlite"


def crl_path(domain_dir: Path) -> Path:
    """Where ``taonet domain revoke|crl`` write the domain's revocation list."""
    return domain_dir / CRL_FILE


def register(sub: Any) -> None:
    p = sub.add_parser("domain", help="create and administer a domain")
    cmds = p.add_subparsers(dest="domain_command", metavar="ACTION", required=True)

    init = cmds.add_parser("init", help="create a domain directory from a template")
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument("--template", metavar="TOML", type=Path, help="domain template")
    init.add_argument("--name", help="domain name (overrides the template)")
    init.add_argument(
        "--guard", choices=["ACL", "Liberal", "Conservative"], help="guard (overrides the template)"
    )
    add_password_option(init)
    init.set_defaults(func=_init)

    pol = cmds.add_parser("policy", help="show or change the guard's rules")
    add_domain_option(pol)
    pol.add_argument(
        "--add-program",
        metavar="PATH",
        action="append",
        default=[],
        type=Path,
        help='authorize the program at PATH to "Execute" (repeatable)',
    )
    pol.add_argument("--allow", metavar="FORM", action="append", default=[], help="add a rule")
    pol.add_argument("--retract", metavar="FORM", action="append", default=[], help="remove a rule")
    pol.add_argument("--show", action="store_true", help="print the rules")
    pol.add_argument(
        "--resign",
        action="store_true",
        help="sign domain.toml and the rules as they stand with the policy key (after an"
        " intended edit by hand, or for a domain made by an earlier taonet)",
    )
    add_password_option(pol)
    pol.set_defaults(func=_policy)

    prin = cmds.add_parser("principal", help="print the name a program would get")
    add_domain_option(prin)
    prin.add_argument("--program", metavar="PATH", type=Path, required=True)
    prin.add_argument(
        "--host", metavar="PRIN", help="the host's principal name (default: print the tail)"
    )
    prin.set_defaults(func=_principal)

    audit = cmds.add_parser("audit", help="print the domain service's audit log")
    add_domain_option(audit)
    audit.add_argument("--limit", metavar="N", type=int, help="print only the N most recent events")
    audit.set_defaults(func=_audit)

    revoke = cmds.add_parser(
        "revoke", help="revoke an issued certificate and rewrite the domain's CRL"
    )
    revoke.add_argument("serial", metavar="SERIAL", help="certificate serial, decimal or 0x-hex")
    revoke.add_argument("--reason", metavar="TEXT", required=True, help="why (kept in the log)")
    add_domain_option(revoke)
    _add_crl_days_option(revoke)
    add_password_option(revoke)
    revoke.set_defaults(func=_revoke)

    crl = cmds.add_parser("crl", help="rewrite the domain's CRL from the audit log")
    add_domain_option(crl)
    _add_crl_days_option(crl)
    add_password_option(crl)
    crl.set_defaults(func=_crl)


def _add_crl_days_option(parser: Any) -> None:
    parser.add_argument(
        "--crl-days",
        metavar="DAYS",
        type=int,
        default=DEFAULT_CRL_DAYS,
        help=f"days until the CRL is due for renewal (default {DEFAULT_CRL_DAYS})",
    )


def add_domain_option(parser: Any) -> None:
    parser.add_argument(
        "--domain",
        metavar="DIR",
        type=Path,
        default=Path(os.environ["TAO_DOMAIN"]) if os.environ.get("TAO_DOMAIN") else None,
        help="domain directory (default: $TAO_DOMAIN)",
    )


def domain_dir(args: argparse.Namespace) -> Path:
    if args.domain is None:
        raise ConfigError("no domain: give --domain DIR or set TAO_DOMAIN")
    path: Path = args.domain
    return path


def _init(args: argparse.Namespace) -> int:
    template = DomainTemplate.load(args.template) if args.template else DomainTemplate()
    overrides: dict[str, Any] = {}
    if args.name:
        overrides["name"] = args.name
    if args.guard:
        overrides["guard"] = args.guard
    if overrides:
        template = attrs.evolve(template, **overrides)
    password = get_password(args.password_file, prompt="New policy key password", confirm=True)
    domain = Domain.create(args.directory, template, password)
    print(f"created domain {domain.config.name!r} in {domain.path}")
    print(f"policy key:  {domain.policy_principal}")
    print(f"guard:       {domain.config.guard} ({domain.guard.subprincipal()})")
    if isinstance(domain.guard, ACLGuard):
        print(f"rules:       {len(domain.guard.rules)}")
    return 0


def _parse_rule(text: str) -> auth.Form:
    try:
        return auth.parse_form(text)
    except CodecError as exc:
        raise ConfigError(f"{text!r} is not a formula: {exc}") from None


def _policy(args: argparse.Namespace) -> int:
    changes = bool(args.add_program or args.allow or args.retract)
    if args.resign:
        if changes:
            raise ConfigError("--resign takes no --add-program, --allow or --retract")
        password = get_password(args.password_file, prompt="Policy key password")
        domain, differences = Domain.resign(domain_dir(args), password)
        print(f"signed the configuration of {domain.path} (serial {domain.config_serial})")
        for line in differences or ["no change from the previous signature"]:
            print(f"  {line}")
        if not args.show:
            return 0
    domain = Domain.load(domain_dir(args))
    if changes:
        guard = old = domain.guard
        if not isinstance(guard, ACLGuard) or not isinstance(old, ACLGuard):
            raise ConfigError(
                f"this domain uses the {domain.config.guard} guard, which has no rules"
            )
        # Work out every change before asking for the password or writing anything.
        for path in args.add_program:
            guard = guard.with_rule(domain.program_rule(measure_file(path)))
        for text in args.allow:
            guard = guard.with_rule(_parse_rule(text))
        for text in args.retract:
            guard = guard.without_rule(_parse_rule(text))
        signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
        domain.save_guard(guard, signer)
        print(
            f"guard updated: {len(old.rules)} -> {len(guard.rules)} rules ({guard.subprincipal()})"
        )
    if args.show or not changes:
        if isinstance(domain.guard, ACLGuard):
            for rule in domain.guard.rules:
                print(rule)
        else:
            print(f"{domain.config.guard} guard (no rules)")
    return 0


def _principal(args: argparse.Namespace) -> int:
    domain = Domain.load(domain_dir(args))
    host = None
    if args.host:
        try:
            host = auth.parse_prin(args.host)
        except CodecError as exc:
            raise ConfigError(f"--host: {exc}") from None
    print(domain.program_name(measure_file(args.program), host=host))
    return 0


def _open_audit(domain_dir: Path) -> AuditLog | None:
    """The domain's audit log, or None if the domain service never created one."""
    from taonet_services.domain_service import AuditLog

    path = audit_path(domain_dir)
    if not path.exists():
        return None
    return AuditLog.open(path)


def _audit(args: argparse.Namespace) -> int:
    from taonet_services.domain_service import format_events

    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be a positive number of events")
    log = _open_audit(domain_dir(args))
    if log is None:
        print("no audit log yet (the domain service has not run)")
        return 0
    with log:
        events = log.events()
    if args.limit is not None:
        events = events[-args.limit :]
    for line in format_events(events):
        print(line)
    return 0


def _parse_serial(text: str) -> int:
    if not _SERIAL.fullmatch(text):
        raise ConfigError(f"serial {text!r} is not a decimal or 0x-hex number")
    serial = int(text, 16) if text[:2] in ("0x", "0X") else int(text, 10)
    if not 0 < serial < _SERIAL_LIMIT:
        raise ConfigError(f"serial {text} is out of range (1 to 2**159 - 1)")
    return serial


def _check_crl_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise ConfigError("--crl-days must be from 1 to 36500")


def _write_crl(domain: Domain, signer: Signer, log: AuditLog | None, *, days: int) -> int:
    """Sign the CRL of every serial revoked in ``log``, write it, return how many."""
    now = time.time_ns()
    revoked: dict[int, int] = {}
    if log is not None:
        when = {
            event.serial: event.time_ns
            for event in log.events()
            if event.kind == "revoked" and event.serial is not None
        }
        revoked = {serial: when.get(serial, now) for serial in log.revoked_serials()}
    bad = sorted(s for s in revoked if not 0 < s < _SERIAL_LIMIT)
    if bad:
        raise ConfigError(f"the audit log revokes serial {bad[0]}, which no CRL can list")
    der = certs.make_crl(signer, domain.policy_anchor, revoked, now_ns=now, next_update_days=days)
    atomic_write(crl_path(domain.path), der, mode=0o644)
    return len(revoked)


def _revoke(args: argparse.Namespace) -> int:
    serial = _parse_serial(args.serial)
    reason = args.reason.strip()
    if not reason:
        raise ConfigError("--reason must not be empty")
    _check_crl_days(args.crl_days)
    domain = Domain.load(domain_dir(args))
    log = _open_audit(domain.path)
    if log is None:
        raise ConfigError(
            f"no audit log at {audit_path(domain.path)}: the domain service has issued nothing"
        )
    with log:
        if log.issued(serial) is None:
            raise ConfigError(f"no certificate with serial {serial} was issued in this domain")
        signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
        fresh = log.revoke(serial, reason=reason)
        count = _write_crl(domain, signer, log, days=args.crl_days)
    if fresh:
        print(f"revoked serial {serial}; CRL now lists {count} serial(s)")
    else:
        print(f"serial {serial} was already revoked; CRL now lists {count} serial(s)")
    return 0


def _crl(args: argparse.Namespace) -> int:
    _check_crl_days(args.crl_days)
    domain = Domain.load(domain_dir(args))
    signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
    log = _open_audit(domain.path)
    if log is None:
        count = _write_crl(domain, signer, None, days=args.crl_days)
    else:
        with log:
            count = _write_crl(domain, signer, log, days=args.crl_days)
    print(
        f"wrote {crl_path(domain.path)}: CRL now lists {count} serial(s),"
        f" next update due in {args.crl_days} day(s)"
    )
    return 0
