"""Issue 9, item 7 follow-up: ``taonet host recertify`` for a host of the first profile.

A root host made before the X.509 profile changed holds a host certificate whose
principal sits under taonet's private ``2.25.<UUID>`` arc: Go cannot parse it and
domains refuse what it endorses. The only way forward used to be a new host directory
(a new key: every sealed blob and program name lost). Now the host refuses to start
with a line that names ``taonet host recertify``, and that command has the policy key
sign a new certificate for the same key and name.

Each test builds the hosted demo's layout (a domain that lets the domain service,
simpleserver and simpleclient run, and a root Linux host for it) with a certificate
of the first profile, exactly as that profile made it, and runs the real ``taonet``
command. The end-to-end test then runs the hosted demo on the recertified host: the
domain service provisions both programs from the host's attestations and they talk
over a Tao channel.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio
from cryptography import x509

from taonet import ConfigError, auth, certs
from taonet.crypto import KdfParams, Signer
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.hosts.linux import LinuxHost, LinuxHostConfig
from taonet.testing import CertificateFactory
from taonet_examples.simpleexample import hosted
from taonet_examples.simpleexample.demo import demo_rules
from tests.certs.conftest import x509check  # noqa: F401 (a fixture)
from tests.cli.cli_helpers import Result, isolated, ok, one_line_error, run

RETIRED_ARC = "2.25.184001271471987179187705270170102784850"
PASSWORD = b"host and policy password"
TIMEOUT = 120


@attrs.frozen
class Setup:
    base: Path
    domain_dir: Path
    host_dir: Path
    #: The host's and the policy key's password (as the demo, one for both).
    pw: Path
    name: auth.Prin
    host_key: bytes


def first_profile_certificate(
    signer: Signer, policy_cert: bytes, host_key: bytes, *, principal: auth.Prin | None = None
) -> bytes:
    """A host certificate exactly as taonet's first profile made it (policy-signed)."""
    factory = CertificateFactory(signer, policy_cert, now_ns=time.time_ns())
    fields = factory.host_fields(host_key, now_ns=time.time_ns())
    fields = fields.without_extension(x509.SubjectAlternativeName.oid)
    fields = fields.with_extension(
        x509.ExtendedKeyUsage([x509.ObjectIdentifier(f"{RETIRED_ARC}.2")])
    )
    named = principal if principal is not None else auth.key_principal(host_key)
    return factory.sign(
        fields.with_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(f"{RETIRED_ARC}.1"), auth.encode(named)
            )
        )
    )


def make_domain(path: Path, *programs: Path, name: str = "recertify") -> Domain:
    return Domain.create(
        path,
        DomainTemplate(
            name=name,
            # The demo's rules: simpleserver keeps its secret in the secret server.
            rules=demo_rules(
                program_subprin(measure_file(programs[0])),
                program_subprin(measure_file(programs[1])),
            ),
            programs=programs,
        ),
        PASSWORD,
        kdf=KdfParams.for_tests(),
    )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """The hosted demo's directory, its host certified in the first profile."""
    base, server, client, taonet_command = hosted.demo_programs(tmp_path / "demo")
    pw = base / "demo-password"
    pw.write_bytes(PASSWORD + b"\n")
    domain_dir, host_dir = base / "domain", base / "host"
    domain = make_domain(domain_dir, server, client, taonet_command)
    signer = domain.unlock(PASSWORD)
    name = LinuxHost.init(
        host_dir,
        LinuxHostConfig(
            kind="root",
            domain=str(domain_dir),
            grace_period=2.0,
            program_path=f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        ),
        password=PASSWORD,
        kdf=KdfParams.for_tests(),
        policy_signer=signer,
    )
    assert name is not None
    host_key = x509.load_der_x509_certificate((host_dir / "host_cert.der").read_bytes())
    key_der = certs.public_key_der(host_key)
    (host_dir / "host_cert.der").write_bytes(
        first_profile_certificate(signer, domain.policy_cert, key_der)
    )
    return Setup(base, domain_dir, host_dir, pw, name, key_der)


def recertify(
    s: Setup, *extra: str, pw: Path | None = None, policy_pw: Path | None = None
) -> list[str]:
    return isolated(
        "host",
        "recertify",
        "--host-dir",
        str(s.host_dir),
        "--password-file",
        str(pw or s.pw),
        "--policy-password-file",
        str(policy_pw or s.pw),
        *extra,
    )


def refused(result: Result, *expected: str) -> str:
    """One ``taonet: error:`` line holding ``expected``, and a non-zero exit (whichever
    status the command table gives that kind of error)."""
    assert result.returncode != 0, result
    return one_line_error(result, *expected, returncode=result.returncode)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def is_first_profile(der: bytes) -> bool:
    cert = x509.load_der_x509_certificate(der)
    return any(e.oid.dotted_string.startswith(RETIRED_ARC) for e in cert.extensions)


@pytest.fixture
async def started_host(setup: Setup) -> AsyncIterator[Setup]:
    """``setup``'s host running in the background (its certificate renewed first)."""
    ok(await run(recertify(setup)))
    ok(
        await run(
            isolated(
                "host", "start", "--host", str(setup.host_dir), "--password-file", str(setup.pw)
            )
        )
    )
    try:
        yield setup
    finally:
        await run(isolated("host", "stop", "--host", str(setup.host_dir)))


# -- the way forward -------------------------------------------------------------------


async def test_a_first_profile_host_is_recertified_and_serves_its_programs(setup: Setup) -> None:
    # Before: the host refuses to start, and says what to run.
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="taonet host recertify"):
        await hosted.run_hosted_demo(setup.base, say=lambda _: None)
    started = await run(
        isolated("host", "start", "--host", str(setup.host_dir), "--password-file", str(setup.pw))
    )
    try:
        refused(
            started, "first certificate profile", f"taonet host recertify --host {setup.host_dir}"
        )
    finally:
        if started.returncode == 0:  # the old code started it: do not leave it behind
            await run(isolated("host", "stop", "--host", str(setup.host_dir)))
    keys = (setup.host_dir / "keys").read_bytes()
    old = (setup.host_dir / "host_cert.der").read_bytes()

    out = ok(await run(recertify(setup)))

    assert f"name:   {setup.name}" in out
    new = (setup.host_dir / "host_cert.der").read_bytes()
    assert new != old
    assert not is_first_profile(new)
    assert (setup.host_dir / "keys").read_bytes() == keys  # same key: sealed state stays
    assert (setup.host_dir / "host_cert.der").stat().st_mode & 0o777 == 0o644
    domain = Domain.load(setup.domain_dir)
    cert = certs.verify_host_certificate(
        new, domain.policy_cert, host_key_der=setup.host_key, now_ns=time.time_ns()
    )
    assert certs.certificate_principal(cert, "host") == setup.name
    assert cert.not_valid_after_utc > cert.not_valid_before_utc

    # After: the host starts, the domain service certifies its programs from its
    # attestations, and simpleclient gets the secret from simpleserver over a channel.
    lines: list[str] = []
    with trio.fail_after(TIMEOUT):
        secret = await hosted.run_hosted_demo(setup.base, say=lines.append)
    assert len(secret) == 32
    assert f"== Linux host {setup.name} (root, certified by the policy key)" in lines
    assert any(line.startswith("[simpleclient] received the secret") for line in lines)


async def test_the_new_certificate_parses_in_go(
    setup: Setup,
    x509check: Path,  # noqa: F811
) -> None:
    ok(await run(recertify(setup)))
    domain = Domain.load(setup.domain_dir)
    policy = setup.base / "policy.der"
    policy.write_bytes(domain.policy_cert)
    args = [
        str(x509check),
        str(time.time_ns() // 10**9),
        str(policy),
        f"host:{setup.host_dir / 'host_cert.der'}",
    ]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    (read,) = json.loads(result.stdout)
    assert read["ok"], read
    assert read["uris"] == [certs.principal_uri("host", setup.name)]


# -- refusals: one line, exit 2, nothing written ------------------------------------------


@pytest.mark.parametrize("wrong", ["host", "policy"])
async def test_a_wrong_password_writes_nothing(setup: Setup, wrong: str) -> None:
    bad = setup.base / "bad-password"
    bad.write_text("not the password\n")
    before = snapshot(setup.base)

    if wrong == "host":
        result = await run(recertify(setup, pw=bad))
    else:
        result = await run(recertify(setup, policy_pw=bad))

    refused(result, "wrong password")
    assert snapshot(setup.base) == before  # not even host.lock or domain_serial
    assert is_first_profile((setup.host_dir / "host_cert.der").read_bytes())


async def test_another_domain_put_in_the_hosts_domain_directory_is_refused(
    setup: Setup, tmp_path: Path
) -> None:
    """Whoever can write the domain directory puts a domain of their own there (its
    programs and password copied): its policy key is not the one host.toml pins."""
    _, server, client, taonet_command = hosted.demo_programs(setup.base)
    setup.domain_dir.rename(tmp_path / "real-domain")
    make_domain(setup.domain_dir, server, client, taonet_command, name="impostor")
    before = snapshot(setup.base)

    result = await run(recertify(setup))

    refused(result, "refused", "policy_key")
    assert snapshot(setup.base) == before


async def test_another_domain_on_the_command_line_is_refused(setup: Setup, tmp_path: Path) -> None:
    _, server, client, taonet_command = hosted.demo_programs(setup.base)
    other = tmp_path / "other-domain"
    make_domain(other, server, client, taonet_command, name="other")
    before = snapshot(setup.base)

    result = await run(recertify(setup, "--domain", str(other)))

    refused(result, "refused", f"names the domain {setup.domain_dir}")
    assert snapshot(setup.base) == before


def _point_at_other_domain(s: Setup, tmp_path: Path, *, move: bool) -> None:
    """Edit host.toml to pin another domain's key (and, with ``move``, name it too)."""
    _, server, client, taonet_command = hosted.demo_programs(s.base)
    other = make_domain(tmp_path / "other-domain", server, client, taonet_command, name="other")
    key = other.policy_principal.key_hash
    assert isinstance(key, auth.Bytes)
    toml = s.host_dir / "host.toml"
    text = toml.read_text()
    old_key = text.split('policy_key = "')[1].split('"')[0]
    text = text.replace(old_key, key.value.hex())
    if move:
        text = text.replace(f'"{s.domain_dir}"', f'"{other.path}"')
    toml.write_text(text)


Tamper = Callable[[Setup, Path], None]


def _tamper_cert_of_another_key(s: Setup, tmp_path: Path) -> None:
    """host_cert.der swapped for the domain's (first-profile) certificate of another key."""
    domain = Domain.load(s.domain_dir)
    other = Signer.generate().public_key_der()
    der = first_profile_certificate(domain.unlock(PASSWORD), domain.policy_cert, other)
    (s.host_dir / "host_cert.der").write_bytes(der)


def _tamper_cert_naming_another_principal(s: Setup, tmp_path: Path) -> None:
    domain = Domain.load(s.domain_dir)
    who = auth.key_principal(Signer.generate().public_key_der())
    der = first_profile_certificate(
        domain.unlock(PASSWORD), domain.policy_cert, s.host_key, principal=who
    )
    (s.host_dir / "host_cert.der").write_bytes(der)


def _tamper_kind(s: Setup, tmp_path: Path) -> None:
    toml = s.host_dir / "host.toml"
    toml.write_text(toml.read_text().replace('kind = "root"', 'kind = "stacked"'))


def _tamper_syntax(s: Setup, tmp_path: Path) -> None:
    toml = s.host_dir / "host.toml"
    toml.write_text(toml.read_text() + "kind = [\n")


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        # host.toml names and pins an attacker's domain: the host's certificate was
        # not signed by that domain's policy key.
        (
            lambda s, t: _point_at_other_domain(s, t, move=True),
            "was not issued by the policy key of the domain",
        ),
        # host.toml pins another key for the same domain directory.
        (lambda s, t: _point_at_other_domain(s, t, move=False), "policy_key"),
        (_tamper_kind, "stacked host"),
        (_tamper_syntax, "not valid TOML"),
        # The certificate of another host of the domain put in this one's place.
        (_tamper_cert_of_another_key, "certifies another key"),
        (_tamper_cert_naming_another_principal, "names another principal"),
    ],
    ids=[
        "toml-other-domain",
        "toml-other-key",
        "toml-kind",
        "toml-syntax",
        "cert-other-key",
        "cert-other-principal",
    ],
)
async def test_a_tampered_host_directory_is_refused(
    setup: Setup, tmp_path: Path, tamper: Tamper, expected: str
) -> None:
    tamper(setup, tmp_path)
    before = snapshot(setup.base)

    result = await run(recertify(setup))

    refused(result, expected)
    assert snapshot(setup.base) == before


async def test_a_running_host_is_refused(started_host: Setup) -> None:
    cert = (started_host.host_dir / "host_cert.der").read_bytes()

    result = await run(recertify(started_host))

    refused(result, "already running", "taonet host stop")
    assert (started_host.host_dir / "host_cert.der").read_bytes() == cert


async def test_a_host_starting_up_is_refused(setup: Setup) -> None:
    """A host that holds host.lock but does not answer on its socket yet (two starts at
    once, or a slow one) is running too: recertify does not write under it."""
    ok(await run(recertify(setup)))  # a first run makes host.lock as a start would
    cert = (setup.host_dir / "host_cert.der").read_bytes()
    fd = os.open(setup.host_dir / "host.lock", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what LinuxHost.run takes first
        result = await run(recertify(setup))
    finally:
        os.close(fd)

    refused(result, "is running", "host.lock", "taonet host stop")
    assert (setup.host_dir / "host_cert.der").read_bytes() == cert
