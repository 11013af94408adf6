"""``taonet domain init|policy|principal``: create and administer a domain."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import attrs

from taonet import auth
from taonet._errors import CodecError, ConfigError
from taonet.cli._password import add_password_option, get_password
from taonet.domain import ACLGuard, Domain, DomainTemplate, measure_file


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
    _add_domain_option(pol)
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
    add_password_option(pol)
    pol.set_defaults(func=_policy)

    prin = cmds.add_parser("principal", help="print the name a program would get")
    _add_domain_option(prin)
    prin.add_argument("--program", metavar="PATH", type=Path, required=True)
    prin.add_argument(
        "--host", metavar="PRIN", help="the host's principal name (default: print the tail)"
    )
    prin.set_defaults(func=_principal)


def _add_domain_option(parser: Any) -> None:
    parser.add_argument(
        "--domain",
        metavar="DIR",
        type=Path,
        default=Path(os.environ["TAO_DOMAIN"]) if os.environ.get("TAO_DOMAIN") else None,
        help="domain directory (default: $TAO_DOMAIN)",
    )


def _domain_dir(args: argparse.Namespace) -> Path:
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
    domain = Domain.load(_domain_dir(args))
    changes = bool(args.add_program or args.allow or args.retract)
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
    domain = Domain.load(_domain_dir(args))
    host = None
    if args.host:
        try:
            host = auth.parse_prin(args.host)
        except CodecError as exc:
            raise ConfigError(f"--host: {exc}") from None
    print(domain.program_name(measure_file(args.program), host=host))
    return 0
