"""Every certificate and CRL taonet issues, read by Go's crypto/x509 and by OpenSSL.

A domain (P-256 and P-384 policy keys) issues what it issues in use: its policy
certificate (``Domain.create``), a host certificate (``Domain.certify_host``), program
certificates from the domain service's certifier for attested programs, and CRLs as
``taonet domain crl`` makes them. A small Go program (``x509check.go``, standard
library only, built once per session) parses each, checks its signature against the
policy certificate and verifies its chain (a program certificate for TLS server and
client use under its channel name); OpenSSL prints each, verifies the chains with
``-x509_strict``, checks the CRL's signature and refuses a revoked certificate.

The first profile's private ``2.25.<UUID>`` extensions made Go refuse every
certificate outright ("malformed extension OID field"), so these tests fail on it;
a certificate of that profile is now refused by taonet too, with a message saying why.

In CI (``CI=true``) a missing ``go`` or ``openssl`` fails these tests; elsewhere they
are skipped with the reason (``apt-get install golang-go``, ``make system-deps``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from taonet import AuthenticationError, auth, certs
from taonet.attestation import attest, validate
from taonet.crypto import Signer
from taonet.domain import Domain, ProgramCertifier
from taonet.hosts import SoftHost
from taonet.testing import CertificateFactory
from tests.conftest import PASSWORD

TIMEOUT = 120
RETIRED_ARC = "2.25.184001271471987179187705270170102784850"


@attrs.frozen
class Issued:
    """What one domain issued, as DER, and what each names."""

    now_ns: int
    policy: bytes
    host: bytes
    host_name: auth.Prin
    programs: dict[auth.Prin, certs.ProgramCertificate]
    revoked: int
    crl: bytes
    empty_crl: bytes
    policy_principal: auth.Prin


async def issue_everything(make_domain: Any, make_host: Any, curve: str) -> Issued:
    domain: Domain = make_domain(guard="Liberal", curve=curve, name="interop")
    signer = domain.unlock(PASSWORD)
    host: SoftHost = make_host(domain)
    host_cert = host.root_endorsement
    assert host_cert is not None
    certifier = ProgramCertifier(domain, signer)
    names = [
        host.name.extend(auth.PrinExt("Program", (auth.Bytes(b"\x01" * 32),))),
        # Strings with quotes, a backslash, spaces and non-ASCII: percent-encoded text.
        host.name.extend(
            auth.PrinExt("Program", (auth.Str('naïve "quoted" \\ name'), auth.Int(-3))),
            auth.PrinExt("PolicyKey", (auth.Bytes(b"\xfe" * 32),)),
        ),
    ]
    programs = {}
    for name in names:
        key = Signer.generate().public_key_der()
        attestation = await host.tao_for(name).attest(auth.Speaksfor(auth.key_principal(key), name))
        programs[name] = certifier.certify(attestation, key)
    now = time.time_ns()
    revoked = programs[names[0]].serial
    crl = certs.make_crl(signer, domain.policy_anchor, [revoked, 7], now_ns=now)
    empty = certs.make_crl(signer, domain.policy_anchor, [], now_ns=now, next_update_days=7)
    return Issued(
        now_ns=now,
        policy=domain.policy_cert,
        host=host_cert,
        host_name=host.name,
        programs=programs,
        revoked=revoked,
        crl=crl,
        empty_crl=empty,
        policy_principal=domain.policy_principal,
    )


def write(directory: Path, name: str, der: bytes) -> Path:
    path = directory / name
    path.write_bytes(der)
    return path


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


async def run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
async def test_go_parses_and_verifies_all_taonet_issues(
    x509check: Path, make_domain: Any, make_host: Any, tmp_path: Path, curve: str
) -> None:
    issued = await issue_everything(make_domain, make_host, curve)
    policy = write(tmp_path, "policy.der", issued.policy)
    args = [
        str(x509check),
        str(issued.now_ns // 10**9),
        str(policy),
        f"cert:{policy}",
        f"host:{write(tmp_path, 'host.der', issued.host)}",
        f"crl:{write(tmp_path, 'crl.der', issued.crl)}",
        f"crl:{write(tmp_path, 'empty.der', issued.empty_crl)}",
    ]
    for i, program in enumerate(issued.programs.values()):
        args.append(f"prog:{write(tmp_path, f'program{i}.der', program.der)}")
    result = await run(args)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    seen = json.loads(result.stdout)
    failed = [r for r in seen if not r["ok"]]
    assert not failed, failed
    by_name = {Path(r["path"]).name: r for r in seen}
    # Go reads each name just as taonet wrote it.
    assert by_name["policy.der"]["uris"] == [certs.principal_uri("policy", issued.policy_principal)]
    assert by_name["host.der"]["uris"] == [certs.principal_uri("host", issued.host_name)]
    for i, (name, program) in enumerate(issued.programs.items()):
        read = by_name[f"program{i}.der"]
        assert read["uris"] == [certs.principal_uri("program", name)]
        assert read["dns"] == [certs.CHANNEL_HOSTNAME]
        assert read["serial"] == str(program.serial)
    assert sorted(by_name["crl.der"]["revoked"]) == sorted([str(issued.revoked), "7"])
    assert by_name["empty.der"].get("revoked") is None


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
async def test_openssl_parses_and_verifies_all_taonet_issues(
    openssl: str, make_domain: Any, make_host: Any, tmp_path: Path, curve: str
) -> None:
    issued = await issue_everything(make_domain, make_host, curve)
    policy = write(tmp_path, "policy.pem", pem(issued.policy))
    host = write(tmp_path, "host.pem", pem(issued.host))
    programs = [
        write(tmp_path, f"program{i}.pem", pem(p.der))
        for i, p in enumerate(issued.programs.values())
    ]
    crl = write(tmp_path, "crl.der", issued.crl)
    for der_name, der, command in [
        ("policy.der", issued.policy, "x509"),
        ("host.der", issued.host, "x509"),
        *[(f"p{i}.der", p.der, "x509") for i, p in enumerate(issued.programs.values())],
        ("crl.der", issued.crl, "crl"),
        ("empty.der", issued.empty_crl, "crl"),
    ]:
        path = write(tmp_path, der_name, der)
        shown = await run([openssl, command, "-inform", "DER", "-noout", "-text", "-in", str(path)])
        assert shown.returncode == 0, (der_name, shown.stderr.decode())
    shown = await run([openssl, "x509", "-noout", "-text", "-in", str(programs[1])])
    name = list(issued.programs)[1]
    assert f"URI:{certs.principal_uri('program', name)}" in shown.stdout.decode()

    verify = [openssl, "verify", "-x509_strict", "-CAfile", str(policy)]
    everything = await run([*verify, str(policy), str(host), *map(str, programs)])
    assert everything.returncode == 0, everything.stdout.decode() + everything.stderr.decode()
    for purpose in ("sslserver", "sslclient"):
        tls = await run([*verify, "-purpose", purpose, *map(str, programs)])
        assert tls.returncode == 0, (purpose, tls.stdout.decode() + tls.stderr.decode())

    crl_pem = write(
        tmp_path,
        "crl.pem",
        x509.load_der_x509_crl(issued.crl).public_bytes(serialization.Encoding.PEM),
    )
    signed = await run(
        [openssl, "crl", "-inform", "DER", "-in", str(crl), "-noout", "-CAfile", str(policy)]
    )
    assert signed.returncode == 0, signed.stderr.decode()
    assert b"verify OK" in signed.stdout + signed.stderr
    with_crl = [*verify, "-crl_check", "-CRLfile", str(crl_pem)]
    revoked = await run([*with_crl, str(programs[0])])
    assert revoked.returncode != 0
    assert b"certificate revoked" in revoked.stdout + revoked.stderr
    fine = await run([*with_crl, str(programs[1]), str(host)])
    assert fine.returncode == 0, fine.stdout.decode() + fine.stderr.decode()


# -- the first profile ----------------------------------------------------------------

NOW = 1_800_000_000 * 10**9
FACTORY = CertificateFactory.generate(now_ns=NOW)
HOST = Signer.generate()
PROGRAM_KEY = Signer.generate().public_key_der()
PROGRAM = auth.key_principal(HOST.public_key_der()).extend(
    auth.PrinExt("Program", (auth.Bytes(b"\x02" * 32),))
)


def retired(number: int, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{RETIRED_ARC}.{number}"), value)


def first_profile_program() -> bytes:
    """A program certificate exactly as taonet's first profile made it."""
    fields = FACTORY.program_fields(PROGRAM_KEY, PROGRAM, now_ns=NOW)
    fields = fields.with_extension(
        x509.SubjectAlternativeName([x509.DNSName(certs.CHANNEL_HOSTNAME)])
    )
    fields = fields.with_extension(retired(1, auth.encode(PROGRAM)))
    return FACTORY.sign(fields.with_extension(retired(3, str(PROGRAM).encode())))


def first_profile_host() -> bytes:
    """A host certificate exactly as taonet's first profile made it."""
    fields = FACTORY.host_fields(HOST.public_key_der(), now_ns=NOW)
    fields = fields.without_extension(x509.SubjectAlternativeName.oid)
    fields = fields.with_extension(
        x509.ExtendedKeyUsage([x509.ObjectIdentifier(f"{RETIRED_ARC}.2")])
    )
    return FACTORY.sign(
        fields.with_extension(retired(1, auth.encode(auth.key_principal(HOST.public_key_der()))))
    )


async def test_go_refuses_the_first_profile(x509check: Path, tmp_path: Path) -> None:
    """Why the profile changed: Go's parser refuses these certificates outright."""
    policy = write(tmp_path, "policy.der", FACTORY.policy_cert)
    program = write(tmp_path, "program.der", first_profile_program())
    host = write(tmp_path, "host.der", first_profile_host())
    result = await run(
        [str(x509check), str(NOW // 10**9), str(policy), f"prog:{program}", f"host:{host}"]
    )
    assert result.returncode == 0, result.stderr.decode()
    for read in json.loads(result.stdout):
        assert read["error"] == "parse: x509: malformed extension OID field"


@pytest.mark.parametrize(
    ("make", "verify"),
    [
        (
            first_profile_program,
            lambda der: certs.verify_program_certificate(FACTORY.anchor, der, now_ns=NOW),
        ),
        (
            first_profile_host,
            lambda der: FACTORY.anchor.verify_host_certificate(
                der, host_key_der=HOST.public_key_der(), now_ns=NOW
            ),
        ),
    ],
    ids=["program", "host"],
)
def test_taonet_refuses_the_first_profile_and_says_why(
    make: Callable[[], bytes], verify: Callable[[bytes], object]
) -> None:
    with pytest.raises(
        AuthenticationError,
        match=f"retired profile .*{RETIRED_ARC}.*Go's crypto/x509 cannot parse.*must issue a new",
    ):
        verify(make())


def test_attestation_endorsed_by_a_first_profile_host_is_refused() -> None:
    statement = auth.Pred("Ready", ())
    att = attest(HOST, statement, now_ns=NOW, root_endorsement=first_profile_host())
    with pytest.raises(AuthenticationError, match="host certificate is of taonet's retired"):
        validate(att, now_ns=NOW, policy_cert=FACTORY.anchor)
    endorsement = FACTORY.host_certificate(HOST.public_key_der(), now_ns=NOW)
    good = attest(HOST, statement, now_ns=NOW, root_endorsement=endorsement)
    signer = validate(good, now_ns=NOW, policy_cert=FACTORY.anchor).signer
    assert signer == auth.key_principal(HOST.public_key_der())
