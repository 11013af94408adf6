"""``taonet demo``: walk through the trust core on a fresh local domain.

It creates a domain with a soft Tao host, names a program, attests for it, validates
that attestation as a domain service would, and seals data only that program can open.
The channel demo (simpleclient and simpleserver talking over a Tao channel) arrives with
the channel work; this walk-through shows the parts it will stand on.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from taonet import auth
from taonet._errors import HostError
from taonet.attestation import validate
from taonet.crypto import KdfParams, Signer
from taonet.domain import ACLGuard, Domain, DomainTemplate, measure_file
from taonet.hosts import SoftHost, SoftTao


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="walk through domains, attestation and sealing")
    p.add_argument(
        "--dir",
        metavar="DIR",
        type=Path,
        help="where to create the demo domain (default: a temporary directory)",
    )
    p.set_defaults(func=_demo)


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}")


def _demo(args: argparse.Namespace) -> int:
    import trio

    if args.dir is None:
        with tempfile.TemporaryDirectory(prefix="taonet-demo-") as tmp:
            trio.run(_run, Path(tmp))
    else:
        trio.run(_run, args.dir)
    return 0


async def _run(base: Path) -> None:
    password = secrets.token_hex(16).encode()
    program = Path(__file__)
    _step(1, f"Create a domain in {base / 'domain'} (policy key, policy certificate, ACL guard)")
    domain = Domain.create(
        base / "domain", DomainTemplate(name="demo"), password, kdf=KdfParams.default()
    )
    print(f"    policy key principal: {domain.policy_principal}")

    _step(2, "Authorize a program to execute: measure it and add a rule to the guard")
    program_hash = measure_file(program)
    policy_signer = domain.unlock(password)
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    domain.save_guard(guard.with_rule(domain.program_rule(program_hash)), policy_signer)
    domain = Domain.load(domain.path)  # re-read: the signed guard verifies on load
    assert isinstance(domain.guard, ACLGuard)
    for rule in domain.guard.rules:
        print(f"    rule: {rule}")

    _step(3, "Create a soft Tao host and have the policy key certify it")
    host = SoftHost.create(base / "host", password, kdf=KdfParams.default())
    host.set_root_endorsement(domain.certify_host(policy_signer, host.public_key_der()))
    print(f"    host principal: {host.name}")

    _step(4, "Start the program on the host; it binds itself to the domain")
    name = domain.program_name(program_hash, host=host.name)
    assert isinstance(name, auth.Prin)
    tao = SoftTao(host, host.name.extend(name.ext))
    print(f"    program principal: {await tao.get_tao_name()}")

    _step(5, "The program makes a key and has its host attest: key(K) speaksfor program")
    program_key = Signer.generate()
    statement = auth.Speaksfor(auth.key_principal(program_key.public_key_der()), name)
    attestation = await tao.attest(statement)
    print(f"    attestation: {len(attestation.to_bytes())} bytes, signed by {host.name}")

    _step(6, "A domain service validates it: signature, chain to the policy key, clock, guard")
    proven = validate(
        attestation.to_bytes(), now_ns=time.time_ns(), policy_cert=domain.policy_anchor
    )
    print(f"    proven: {proven.statement}")
    domain.guard.check(proven.speaker, "Execute")
    print(f"    guard allows {proven.speaker} to Execute")

    _step(7, "Seal a secret to the program; another program cannot unseal it")
    sealed = await tao.seal(b"the program's secret", "self")
    data, policy = await tao.unseal(sealed)
    print(f"    sealed {len(sealed)} bytes; unsealed {data!r} under policy {policy!r}")
    other = SoftTao(host, host.name.extend(domain.program_name(b"\x00" * 32).ext))
    try:
        await other.unseal(sealed)
    except HostError as exc:
        print(f"    another program is refused: {exc}")

    print(
        "\nTao channels and simpleexample (simpleclient, simpleserver, domain service): "
        "coming with the channel issue."
    )
