"""``taonet domain init|policy|show|principal|audit|revoke|crl|directive``: administer a domain.

``directive`` lives in :mod:`taonet.cli._directive_cmd`.

Each prints for people, or with ``-o json`` one JSON document (see
:mod:`taonet.cli._output`): certificate serials, up to 160 bits, as decimal strings.
A domain directory that is not there is *not found* (exit 3), a wrong policy key
password *refused* (exit 4).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from taonet import CodecError, ConfigError, auth
from taonet.cli import _manufacturer_cmd
from taonet.cli._failures import NotFoundError, UsageError, is_missing
from taonet.cli._output import add_output_option, emit, iso_time
from taonet.cli._password import add_password_option, get_password
from taonet.crypto import Signer
from taonet.domain import (
    ACLGuard,
    Domain,
    DomainTemplate,
    any_tpm_host_rule,
    audit_behind,
    host_state_rule,
    measure_file,
    program_subprin,
    sign_domain_crl,
)
from taonet.files import atomic_write

if TYPE_CHECKING:
    from taonet.hosts.linux import LinuxHostConfig
    from taonet_services.domain_service import AuditLog

#: The revocation list ``taonet domain revoke|crl`` writes into the domain directory.
CRL_FILE: Final = "crl.der"
#: How long a CRL the CLI writes stays fresh unless told otherwise.
DEFAULT_CRL_DAYS: Final = 7
_SERIAL: Final = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]+")
_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
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
    add_output_option(init)
    init.set_defaults(func=_init)

    pol = cmds.add_parser("policy", help="show or change the guard's rules")
    add_domain_option(pol)
    pol.add_argument(
        "--add-program",
        metavar="PATH",
        action="append",
        default=[],
        type=Path,
        help='authorize the program at PATH (a file or a program directory) to "Execute", '
        "named as the domain's Linux host names it ($TAO_HOST, else linux_tao_host in the "
        "domain; its interpreter too, for a '#!/usr/bin/env NAME' script or a directory's "
        ".py entry), or by its hash alone if there is no host yet (repeatable)",
    )
    pol.add_argument(
        "--remove-program",
        metavar="PATH|SHA256",
        action="append",
        default=[],
        help="remove the rule that lets a program execute: its file or directory, or its "
        "hash in hex (taonet domain policy --show) once the file is gone (repeatable)",
    )
    pol.add_argument(
        "--entry",
        metavar="RELPATH",
        help="the file that runs in each program directory given (default __main__.py, as "
        "taonet run --entry)",
    )
    pol.add_argument(
        "--allow",
        metavar="FORM",
        action="append",
        default=[],
        help='add a rule, Authorized(PRINCIPAL, "op", args...) (repeatable; a rule the guard '
        "already holds, or of another shape, is refused)",
    )
    pol.add_argument(
        "--retract",
        "--remove-rule",
        dest="retract",
        metavar="FORM",
        action="append",
        default=[],
        help="remove a rule, as --show prints it (repeatable)",
    )
    _add_host_options(pol)
    pol.add_argument("--show", action="store_true", help="print the rules")
    pol.add_argument(
        "--resign",
        action="store_true",
        help="sign domain.toml and the rules as they stand with the policy key (after an"
        " intended edit by hand, or for a domain made by an earlier taonet)",
    )
    _manufacturer_cmd.add_options(pol)
    add_password_option(pol)
    add_output_option(pol)
    pol.set_defaults(func=_policy)

    show = cmds.add_parser(
        "show", help="show the domain: name, policy key, guard, validity, signed serial"
    )
    add_domain_option(show)
    add_output_option(show)
    show.set_defaults(func=_show)

    prin = cmds.add_parser("principal", help="print the name a program would get")
    add_domain_option(prin)
    prin.add_argument(
        "--program", metavar="PATH", type=Path, required=True, help="a file or program directory"
    )
    prin.add_argument(
        "--entry",
        metavar="RELPATH",
        help="the file that runs in a program directory (default __main__.py)",
    )
    prin.add_argument(
        "--host", metavar="PRIN", help="the host's principal name (default: print the tail)"
    )
    add_output_option(prin)
    prin.set_defaults(func=_principal)

    audit = cmds.add_parser("audit", help="print the domain service's audit log")
    add_domain_option(audit)
    audit.add_argument("--limit", metavar="N", type=int, help="print only the N most recent events")
    add_output_option(audit)
    audit.set_defaults(func=_audit)

    revoke = cmds.add_parser(
        "revoke", help="revoke an issued certificate and rewrite the domain's CRL"
    )
    revoke.add_argument("serial", metavar="SERIAL", help="certificate serial, decimal or 0x-hex")
    revoke.add_argument("--reason", metavar="TEXT", required=True, help="why (kept in the log)")
    add_domain_option(revoke)
    _add_crl_days_option(revoke)
    add_password_option(revoke)
    add_output_option(revoke)
    revoke.set_defaults(func=_revoke)

    crl = cmds.add_parser("crl", help="rewrite the domain's CRL from the audit log")
    add_domain_option(crl)
    _add_crl_days_option(crl)
    crl.add_argument(
        "--accept-audit-behind",
        action="store_true",
        help="let the domain service start on an audit log restored from a backup that"
        " lacks revocations the domain made (they stay revoked in every CRL)",
    )
    add_password_option(crl)
    add_output_option(crl)
    crl.set_defaults(func=_crl)

    from taonet.cli._directive_cmd import register_directive

    register_directive(cmds)


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
    """The domain directory the command names; NotFoundError if there is none there."""
    if args.domain is None:
        raise UsageError("no domain: give --domain DIR or set TAO_DOMAIN")
    path: Path = args.domain
    if is_missing(path):
        raise NotFoundError(f"no domain at {path}: no such directory")
    return path


def load_domain(args: argparse.Namespace) -> Domain:
    """The domain the command names, checked (see :meth:`Domain.load`)."""
    return Domain.load(domain_dir(args))


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
    rules = domain.guard.rules if isinstance(domain.guard, ACLGuard) else None

    def text() -> None:
        print(f"created domain {domain.config.name!r} in {domain.path}")
        print(f"policy key:  {domain.policy_principal}")
        print(f"guard:       {domain.config.guard} ({domain.guard.subprincipal()})")
        if rules is not None:
            print(f"rules:       {len(rules)}")

    emit(
        args,
        {
            "domain": str(domain.path),
            "name": domain.config.name,
            "policy_principal": str(domain.policy_principal),
            "guard": domain.config.guard,
            "guard_principal": str(domain.guard.subprincipal()),
            "rules": None if rules is None else [str(rule) for rule in rules],
        },
        text,
    )
    return 0


def _parse_rule(text: str, option: str) -> auth.Form:
    try:
        return auth.parse_form(text)
    except CodecError as exc:
        raise UsageError(f"{option} {text!r} is not a formula: {exc}") from None


def _measure(path: Path, option: str) -> bytes:
    """A program file's hash; NotFoundError if there is nothing at ``path``."""
    if not os.path.lexists(path):
        raise NotFoundError(f"{option} {path}: no such file")
    return measure_file(path)


def _program_hash(text: str) -> bytes:
    """``--remove-program``: a program file's hash, or a hash given in hex."""
    path = Path(text)
    if path.exists() or not _SHA256_HEX.fullmatch(text):
        if not path.exists():
            raise NotFoundError(
                f"--remove-program {text}: no such file (give the program's sha256 in hex, "
                "as --show prints it, to remove the rule of a program that is gone)"
            )
        return _measure(path, "--remove-program")
    return bytes.fromhex(text)


def _host_config(domain: Domain) -> LinuxHostConfig | None:
    """The domain's Linux host ($TAO_HOST, else linux_tao_host in the domain), if made:
    programs are named as it names them (see :mod:`taonet.hosts.linux`)."""
    from taonet.hosts.linux import default_host_dir, host_config_at

    where = os.environ.get("TAO_HOST")
    return host_config_at(Path(where) if where else default_host_dir(domain.path))


def _program_rule(
    host: LinuxHostConfig | None, path: Path, option: str, entry: str | None
) -> auth.Form:
    """The rule that lets the program at ``path`` (a file, or a directory run from
    ``entry``) execute on ``host``."""
    from taonet.hosts.linux import program_rule_on

    if not os.path.lexists(path):
        raise NotFoundError(f"{option} {path}: no such file")
    return program_rule_on(host, path, entry=entry if path.is_dir() else None)


def _add_host_options(parser: Any) -> None:
    """``--add-host`` and ``--remove-host``: the TPM host states the domain trusts."""
    parser.add_argument(
        "--add-host",
        metavar="SPEC",
        action="append",
        default=[],
        help="trust a TPM host state: the name taonet host show prints for a TPM host, "
        'tpm2([...]).PCRs("nums", "hexvals"), writes Authorized(tpm2([...]).PCRs(...), '
        '"Host"): that state on that TPM only; the bare PCRs("nums", "hexvals") part writes '
        'Authorized(ext.PCRs(...), "Host"): that state on EVERY TPM the quote service ever '
        "certified, so for every user who can open such a TPM (repeatable)",
    )
    parser.add_argument(
        "--remove-host",
        metavar="SPEC",
        action="append",
        default=[],
        help="stop trusting a TPM host state given as for --add-host: the full name removes "
        "the rule pinned to that TPM, the bare PCRs(...) part the rule for every TPM "
        "(repeatable)",
    )


def _changed_hosts(args: argparse.Namespace, guard: ACLGuard) -> ACLGuard:
    """``--add-host`` and ``--remove-host`` applied to ``guard``."""
    for option, specs in (("--add-host", args.add_host), ("--remove-host", args.remove_host)):
        for spec in specs:
            try:
                rule = host_state_rule(spec)
            except ConfigError as exc:
                raise UsageError(f"{option}: {exc}") from None
            if option == "--add-host":
                if rule in guard.rules:
                    raise UsageError(f"{option}: the domain already trusts this state ({rule})")
                guard = guard.with_rule(rule)
                continue
            if rule in guard.rules:
                guard = guard.without_rule(rule)
                continue
            any_tpm = any_tpm_host_rule(rule)
            if any_tpm != rule and any_tpm in guard.rules:
                raise NotFoundError(
                    f"{option}: the domain trusts this state on every TPM ({any_tpm}), not "
                    "pinned to this one; removing that rule untrusts the state on every TPM: "
                    "to do so give its bare PCRs(...) part"
                )
            raise NotFoundError(f"{option}: the domain does not trust this state ({rule})")
    return guard


def _changed_guard(args: argparse.Namespace, domain: Domain, guard: ACLGuard) -> ACLGuard:
    """The guard with every change the command asks for; refuses duplicates and rules
    of a shape the guard never matches, and removals of rules it does not hold."""
    guard = _changed_hosts(args, guard)
    host = _host_config(domain) if args.add_program or args.remove_program else None
    for path in args.add_program:
        rule = _program_rule(host, path, "--add-program", args.entry)
        if rule in guard.rules:
            raise UsageError(f"--add-program {path}: already authorized ({rule})")
        guard = guard.with_rule(rule)
    for text in args.allow:
        rule = _parse_rule(text, "--allow")
        try:
            ACLGuard.check_rule(rule)
        except ConfigError as exc:
            raise UsageError(f"--allow {text!r}: {exc}") from None
        if rule in guard.rules:
            raise UsageError(f"--allow {text!r}: the guard already holds {rule}")
        guard = guard.with_rule(rule)
    for given in args.remove_program:
        if Path(given).exists():
            rule = _program_rule(host, Path(given), "--remove-program", args.entry)
        else:
            rule = domain.program_rule(_program_hash(given))
        if rule not in guard.rules:
            raise NotFoundError(f"--remove-program {given}: no rule authorizes it ({rule})")
        guard = guard.without_rule(rule)
    for text in args.retract:
        rule = _parse_rule(text, "--retract")
        if rule not in guard.rules:
            raise NotFoundError(f"--retract {text!r}: the guard has no rule {rule}")
        guard = guard.without_rule(rule)
    return guard


def _policy(args: argparse.Namespace) -> int:
    changes = bool(args.add_program or args.allow or args.retract or args.remove_program)
    changes = changes or bool(args.add_host or args.remove_host)
    report: dict[str, Any] = {"domain": str(args.domain)}
    lines: list[str] = []
    if args.resign:
        if changes:
            raise UsageError(
                "--resign takes no --add-program, --remove-program, --allow, --retract, "
                "--add-host or --remove-host"
            )
        password = get_password(args.password_file, prompt="Policy key password")
        domain, differences = Domain.resign(domain_dir(args), password)
        lines.append(f"signed the configuration of {domain.path} (serial {domain.config_serial})")
        unchanged = ["no change from the previous signature"]
        lines.extend(f"  {line}" for line in differences or unchanged)
        report["resigned"] = {"serial": domain.config_serial, "differences": differences}
    domain = load_domain(args)
    if changes:
        old = domain.guard
        if not isinstance(old, ACLGuard):
            raise UsageError(
                f"this domain uses the {domain.config.guard} guard, which has no rules"
            )
        # Work out every change before asking for the password or writing anything.
        guard = _changed_guard(args, domain, old)
        signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
        domain.save_guard(guard, signer)
        lines.append(
            f"guard updated: {len(old.rules)} -> {len(guard.rules)} rules ({guard.subprincipal()})"
        )
        report["added"] = [str(r) for r in guard.rules if r not in old.rules]
        report["removed"] = [str(r) for r in old.rules if r not in guard.rules]
        report["config_serial"] = domain.config_serial
    _manufacturer_cmd.apply(args, domain, lines, report)
    show = args.show or not (changes or args.resign or _manufacturer_cmd.wanted(args))
    rules = domain.guard.rules if isinstance(domain.guard, ACLGuard) else None
    report["guard"] = domain.config.guard
    report["guard_principal"] = str(domain.guard.subprincipal())
    report["rules"] = None if rules is None else [str(rule) for rule in rules]

    def text() -> None:
        for line in lines:
            print(line)
        if not show:
            return
        if rules is None:
            print(f"{domain.config.guard} guard (no rules)")
        for rule in rules or ():
            print(rule)

    emit(args, report, text)
    return 0


def _show(args: argparse.Namespace) -> int:
    domain = load_domain(args)
    rules = domain.guard.rules if isinstance(domain.guard, ACLGuard) else None
    crl = crl_path(domain.path)
    audit = audit_path(domain.path)
    document = {
        "domain": str(domain.path),
        "name": domain.config.name,
        "policy_principal": str(domain.policy_principal),
        "guard": domain.config.guard,
        "guard_principal": str(domain.guard.subprincipal()),
        "rules": None if rules is None else len(rules),
        "host_validity_days": domain.config.host_validity_days,
        "program_validity_days": domain.config.program_validity_days,
        "config_serial": domain.config_serial,
        "crl": str(crl) if crl.exists() else None,
        "audit_log": str(audit) if audit.exists() else None,
    }

    def text() -> None:
        width = max(len(key) for key in document) + 1
        for key, value in document.items():
            shown = "-" if value is None else value
            print(f"{(key.replace('_', ' ') + ':').ljust(width + 1)} {shown}")

    emit(args, document, text)
    return 0


def _principal(args: argparse.Namespace) -> int:
    domain = load_domain(args)
    host = None
    if args.host:
        try:
            host = auth.parse_prin(args.host)
        except CodecError as exc:
            raise UsageError(f"--host: {exc}") from None
    from taonet.hosts.linux import LinuxHostConfig, program_rule_on, program_subprin_on

    if not os.path.lexists(args.program):
        raise NotFoundError(f"--program {args.program}: no such file")
    on_host = _host_config(domain)
    if on_host is None and not args.program.is_dir():
        if args.entry is not None:
            raise UsageError(f"--entry: {args.program} is a file, not a program directory")
        program = program_subprin(_measure(args.program, "--program"))
    else:
        config = LinuxHostConfig(kind="root", guard="Liberal") if on_host is None else on_host
        program = program_subprin_on(config, args.program, entry=args.entry)
    # A file's hash, or a program directory's manifest hash (first in the name).
    first = program.exts[0].args[0]
    program_hash = first.value if isinstance(first, auth.Bytes) else b""
    ext = auth.SubPrin(program.exts + domain.policy_subprin.exts)
    name = auth.PrinTail(ext) if host is None else host.extend(ext)
    emit(
        args,
        {
            "program": str(args.program),
            "program_sha256": program_hash.hex(),
            "host": None if host is None else str(host),
            "principal": str(name),
            "authorized": domain.guard.query(
                program_rule_on(on_host, args.program, entry=args.entry)
            ),
        },
        lambda: print(name),
    )
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
        raise UsageError("--limit must be a positive number of events")
    domain = load_domain(args)
    log = _open_audit(domain.path)
    events = []
    if log is not None:
        with log:
            events = log.events()
    if args.limit is not None:
        events = events[-args.limit :]

    def text() -> None:
        if log is None:
            print("no audit log yet (the domain service has not run)")
        for line in format_events(events):
            print(line)

    emit(
        args,
        {
            "domain": str(domain.path),
            "audit_log": None if log is None else str(audit_path(domain.path)),
            "events": [
                {
                    "id": event.id,
                    "time": iso_time(event.time_ns),
                    "time_ns": event.time_ns,
                    "kind": event.kind,
                    "serial": None if event.serial is None else str(event.serial),
                    "principal": event.principal,
                    "reason_code": event.reason_code,
                    "reason": event.reason,
                    "peer": event.peer,
                    "detail": dict(event.detail),
                }
                for event in events
            ],
        },
        text,
    )
    return 0


def _parse_serial(text: str) -> int:
    if not _SERIAL.fullmatch(text):
        raise UsageError(f"serial {text!r} is not a decimal or 0x-hex number")
    serial = int(text, 16) if text[:2] in ("0x", "0X") else int(text, 10)
    if not 0 < serial < _SERIAL_LIMIT:
        raise UsageError(f"serial {text} is out of range (1 to 2**159 - 1)")
    return serial


def _check_crl_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise UsageError("--crl-days must be from 1 to 36500")


def _write_crl(
    domain: Domain, signer: Signer, log: AuditLog | None, *, days: int, accept_behind: bool = False
) -> int:
    """Sign the CRL of every serial revoked in ``log`` and in the domain's record
    (``policy_keys/crl_state``), write it, return how many it lists.

    With ``accept_behind``, the serials the log lacks are recorded as accepted (the
    domain service then starts on this log; they stay listed)."""
    now = time.time_ns()
    revoked: dict[int, int] = {}
    audit_revoked: frozenset[int] = frozenset()
    if log is not None:
        when = {
            event.serial: event.time_ns
            for event in log.events()
            if event.kind == "revoked" and event.serial is not None
        }
        audit_revoked = log.revoked_serials()
        revoked = {serial: when.get(serial, now) for serial in audit_revoked}
    bad = sorted(s for s in revoked if not 0 < s < _SERIAL_LIMIT)
    if bad:
        raise ConfigError(f"the audit log revokes serial {bad[0]}, which no CRL can list")
    accept = audit_behind(domain.path, domain.policy_anchor, audit_revoked) if accept_behind else ()
    der, record = sign_domain_crl(
        domain.path,
        signer,
        domain.policy_anchor,
        revoked,
        now_ns=now,
        next_update_days=days,
        accept=accept,
    )
    atomic_write(crl_path(domain.path), der, mode=0o644)
    return len(record.revoked)


def _revoke(args: argparse.Namespace) -> int:
    serial = _parse_serial(args.serial)
    reason = args.reason.strip()
    if not reason:
        raise UsageError("--reason must not be empty")
    _check_crl_days(args.crl_days)
    domain = load_domain(args)
    log = _open_audit(domain.path)
    if log is None:
        raise NotFoundError(
            f"no audit log at {audit_path(domain.path)}: the domain service has issued nothing"
        )
    with log:
        if log.issued(serial) is None:
            raise NotFoundError(f"no certificate with serial {serial} was issued in this domain")
        signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
        fresh = log.revoke(serial, reason=reason)
        count = _write_crl(domain, signer, log, days=args.crl_days)
    already = "" if fresh else " was already revoked"
    emit(
        args,
        {
            "serial": str(serial),
            "newly_revoked": fresh,
            "crl": str(crl_path(domain.path)),
            "crl_serials": count,
        },
        lambda: print(
            f"{'revoked ' if fresh else ''}serial {serial}{already}; "
            f"CRL now lists {count} serial(s)"
        ),
    )
    return 0


def _crl(args: argparse.Namespace) -> int:
    _check_crl_days(args.crl_days)
    domain = load_domain(args)
    signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
    log = _open_audit(domain.path)
    accept = bool(args.accept_audit_behind)
    if log is None:
        count = _write_crl(domain, signer, None, days=args.crl_days, accept_behind=accept)
    else:
        with log:
            count = _write_crl(domain, signer, log, days=args.crl_days, accept_behind=accept)
    emit(
        args,
        {"crl": str(crl_path(domain.path)), "crl_serials": count, "crl_days": args.crl_days},
        lambda: print(
            f"wrote {crl_path(domain.path)}: CRL now lists {count} serial(s),"
            f" next update due in {args.crl_days} day(s)"
        ),
    )
    return 0
