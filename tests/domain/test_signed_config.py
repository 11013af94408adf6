"""The policy key signs the domain's configuration: hand edits of a domain are refused.

Each test edits a real domain directory the way someone who can write to it, but does
not hold the policy key's password, would, and checks that the domain is refused when
it is loaded (and so by the domain service, the CLI and the Linux host, which all load
it through ``Domain.load``), naming the field that differs.
"""

from __future__ import annotations

import shutil
import time
import tomllib

import attrs
import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from taonet import AuthenticationError, AuthorizationError, CodecError, ConfigError, auth
from taonet.crypto import Signer, Verifier
from taonet.domain import (
    ACLGuard,
    ConservativeGuard,
    Domain,
    DomainConfig,
    LiberalGuard,
    ProgramCertifier,
)
from taonet.domain._signed_config import (
    DOMAIN_CONFIG_CONTEXT,
    SignedConfig,
    read_signed_config,
    write_signed_config,
)
from taonet.hosts import SoftHost
from taonet_services.domain_service import DomainService
from tests.conftest import PASSWORD

GOOD = b"\x61" * 32
BAD = b"\x62" * 32


def acl_domain(make_domain, **fields: object) -> Domain:  # type: ignore[no-untyped-def]
    domain: Domain = make_domain(**fields)
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD))
    return domain


def edit(domain: Domain, old: str, new: str) -> None:
    path = domain.path / "domain.toml"
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


def append(domain: Domain, text: str) -> None:
    with open(domain.path / "domain.toml", "a") as f:
        f.write(text)


async def certify(domain: Domain, host: SoftHost, program_hash: bytes) -> None:
    name = domain.program_name(program_hash, host=host.name)
    assert isinstance(name, auth.Prin)
    key = Signer.generate()
    att = await host.tao_for(name).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
    )
    ProgramCertifier(domain, domain.unlock(PASSWORD)).certify(att, key.public_key_der())


def test_every_field_of_domain_toml_is_signed(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain, name="acme", program_validity_days=7)
    doc = tomllib.loads((domain.path / "domain.toml").read_text())
    in_file = {f"{s}.{k}" for s, table in doc.items() for k in table}
    signed = read_signed_config((domain.path / "domain.sig").read_bytes(), domain.policy_verifier)
    assert set(signed.config) == in_file == set(domain.config.signed_fields())
    assert len(in_file) == len(attrs.fields(DomainConfig))
    assert signed.config["domain.guard"] == "ACL"
    assert signed.config["certificates.program_validity_days"] == 7
    assert signed.guard == str(domain.guard.subprincipal())
    assert Domain.load(domain.path).config_serial == signed.serial


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('guard = "ACL"', 'guard = "Liberal"', "domain.guard"),
        ('guard = "ACL"', 'guard = "Conservative"', "domain.guard"),
        ('name = "acme"', 'name = "attacker"', "domain.name"),
        ("program_validity_days = 7", "program_validity_days = 36500", "program_validity_days"),
        ("host_validity_days = 365", "host_validity_days = 36500", "host_validity_days"),
        # Dropping a line falls back to the default (30 days), which was not signed.
        ("program_validity_days = 7\n", "", "program_validity_days"),
    ],
)
async def test_hand_edited_domain_toml_is_refused_and_certifies_nothing(  # type: ignore[no-untyped-def]
    make_domain, make_host, old: str, new: str, field: str
) -> None:
    domain = acl_domain(make_domain, name="acme", program_validity_days=7)
    host = make_host(domain)
    await certify(Domain.load(domain.path), host, GOOD)
    with pytest.raises(AuthorizationError):
        await certify(Domain.load(domain.path), host, BAD)
    edit(domain, old, new)
    with pytest.raises(ConfigError, match=rf"domain\.toml: refused: .*{field}.*--resign"):
        Domain.load(domain.path)
    with pytest.raises(ConfigError, match=field):
        DomainService.open(domain.path, PASSWORD)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("[acl]\nrules = ['Authorized(ext.Program([6262]), \"Execute\")']\n", r"\[acl\]"),
        ('[trust]\nca_certs = ["attacker-ca.pem"]\n', r"\[trust\]"),
        ("[certificates]\ntrusted_cas = []\n", "certificates.trusted_cas"),
    ],
)
def test_sections_and_keys_added_to_domain_toml_are_refused(  # type: ignore[no-untyped-def]
    make_domain, text: str, what: str
) -> None:
    domain = acl_domain(make_domain)
    if text.startswith("[certificates]"):
        edit(domain, "[certificates]\n", text)
    else:
        append(domain, text)
    with pytest.raises(ConfigError, match=f"unknown section.*{what}"):
        Domain.load(domain.path)


def test_a_liberal_domain_loads_only_as_signed(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(guard="Liberal")
    assert isinstance(Domain.load(domain.path).guard, LiberalGuard)
    edit(domain, 'guard = "Liberal"', 'guard = "ACL"')
    (domain.path / "acls").write_bytes(ACLGuard().to_signed(domain.unlock(PASSWORD)))
    # Even a rule set the policy key did sign is refused: it was not signed with this
    # configuration.
    with pytest.raises(ConfigError, match=r"domain\.guard is 'ACL' but the policy key signed"):
        Domain.load(domain.path)


def test_domain_sig_from_another_domain_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = acl_domain(make_domain), make_domain(guard="Liberal")
    edit(ours, 'guard = "ACL"', 'guard = "Liberal"')
    shutil.copyfile(theirs.path / "domain.sig", ours.path / "domain.sig")
    with pytest.raises(ConfigError, match=r"domain\.sig: refused: .*not signed by this domain"):
        Domain.load(ours.path)


def test_a_statement_signed_by_another_key_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    edit(domain, 'guard = "ACL"', 'guard = "Liberal"')
    # The attacker signs exactly what the edited files say, with a key of their own.
    statement = SignedConfig(
        config=DomainConfig.from_toml((domain.path / "domain.toml").read_bytes()).signed_fields(),
        policy_cert_sha256=read_signed_config(
            (domain.path / "domain.sig").read_bytes(), domain.policy_verifier
        ).policy_cert_sha256,
        guard=str(LiberalGuard().subprincipal()),
        serial=99,
    )
    (domain.path / "domain.sig").write_bytes(write_signed_config(statement, Signer.generate()))
    with pytest.raises(ConfigError, match="not signed by this domain's policy key"):
        Domain.load(domain.path)


def test_the_signed_statement_cannot_be_edited(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    edit(domain, 'guard = "ACL"', 'guard = "Liberal"')
    sig = domain.path / "domain.sig"
    text = sig.read_text()
    assert '\\"domain.guard\\":\\"ACL\\"' in text
    sig.write_text(text.replace('\\"domain.guard\\":\\"ACL\\"', '\\"domain.guard\\":\\"Liberal\\"'))
    with pytest.raises(ConfigError, match=r"domain\.sig: refused: .*bad signature"):
        Domain.load(domain.path)


def test_a_non_canonical_statement_is_refused_even_if_signed(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    good = read_signed_config((domain.path / "domain.sig").read_bytes(), domain.policy_verifier)
    # Same fields, one extra space: a second encoding of one statement is not accepted.
    data = good.to_bytes().replace(b'"format":', b'"format": ')
    signature = domain.unlock(PASSWORD).sign(data, DOMAIN_CONFIG_CONTEXT).hex()
    (domain.path / "domain.sig").write_text(
        tomli_w.dumps({"statement": data.decode(), "signature": signature})
    )
    with pytest.raises(ConfigError, match="canonical"):
        Domain.load(domain.path)


@pytest.mark.parametrize(
    "contents",
    [b"", b"\xff\xfe", b"statement = 1\n", b'statement = "{}"\nsignature = "zz"\n', b"[x\n"],
)
def test_malformed_domain_sig_is_refused(make_domain, contents: bytes) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    (domain.path / "domain.sig").write_bytes(contents)
    with pytest.raises(ConfigError, match=r"domain\.sig: refused"):
        Domain.load(domain.path)


def test_an_oversized_domain_sig_is_not_read(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    (domain.path / "domain.sig").write_bytes(b"#" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="limit"):
        Domain.load(domain.path)


_VERIFIER = Verifier.from_der(Signer.generate().public_key_der())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_read_signed_config_raises_only_codec_or_authentication_errors(data: bytes) -> None:
    with pytest.raises((CodecError, AuthenticationError)):
        read_signed_config(data, _VERIFIER)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_statement_parser_raises_only_codec_errors(data: bytes) -> None:
    try:
        statement = SignedConfig.from_bytes(data)
    except CodecError:
        return
    assert statement.to_bytes() == data


def test_an_older_signed_rule_set_is_refused(make_domain, make_host) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    signer = domain.unlock(PASSWORD)
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(BAD)), signer)
    older = (domain.path / "acls").read_bytes()
    # The operator retracts BAD; the attacker puts back the rule set that allowed it
    # (signed by the policy key, but not the one signed with this configuration).
    domain.save_guard(domain.guard.without_rule(domain.program_rule(BAD)), signer)
    (domain.path / "acls").write_bytes(older)
    with pytest.raises(ConfigError, match=r"acls: refused: the guard is \.ACLGuard"):
        Domain.load(domain.path)


def test_an_older_signed_configuration_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    older = (domain.path / "domain.sig").read_bytes()
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(BAD)), domain.unlock(PASSWORD))
    (domain.path / "domain.sig").write_bytes(older)
    with pytest.raises(ConfigError, match="rolled back: serial 2 is older than 3"):
        Domain.load(domain.path)
    # Without the serial record, the rules it did not sign still give it away.
    (domain.path / "policy_keys/config_serial").unlink()
    with pytest.raises(ConfigError, match="acls: refused"):
        Domain.load(domain.path)


@pytest.mark.parametrize("guard", ["ACL", "Conservative"])
def test_policy_certificate_from_another_domain_is_refused(make_domain, guard: str) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make_domain(guard=guard), make_domain(guard=guard)
    shutil.copyfile(theirs.path / "policy_keys/cert.der", ours.path / "policy_keys/cert.der")
    with pytest.raises(ConfigError, match=r"domain\.sig: refused: .*not signed by this domain"):
        Domain.load(ours.path)


def test_a_new_certificate_for_the_same_key_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    from taonet import certs

    domain = make_domain(guard="Conservative")
    cert = certs.make_policy_certificate(
        domain.unlock(PASSWORD),
        common_name="attacker's choice",
        organization="taonet",
        now_ns=time.time_ns(),
        validity_days=36500,
    )
    (domain.path / "policy_keys/cert.der").write_bytes(cert)
    with pytest.raises(ConfigError, match="policy certificate has SHA-256"):
        Domain.load(domain.path)


def test_a_whole_other_domain_cannot_use_our_policy_key(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = acl_domain(make_domain), make_domain(guard="Liberal")
    for name in ("domain.toml", "domain.sig", "policy_keys/cert.der"):
        shutil.copyfile(theirs.path / name, ours.path / name)
    # A consistent domain again, but not ours: the service cannot sign for it.
    assert Domain.load(ours.path).policy_principal == theirs.policy_principal
    with pytest.raises(ConfigError, match="does not match the policy certificate"):
        DomainService.open(ours.path, PASSWORD)


def test_policy_changes_resign_the_configuration(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    before = Domain.load(domain.path).config_serial
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(BAD)), domain.unlock(PASSWORD))
    loaded = Domain.load(domain.path)
    assert loaded.config_serial == before + 1
    assert loaded.guard == domain.guard


def test_save_guard_by_another_key_writes_nothing(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = acl_domain(make_domain), make_domain()
    files = {n: (ours.path / n).read_bytes() for n in ("acls", "domain.sig")}
    with pytest.raises(ConfigError, match="only the policy key"):
        ours.save_guard(ACLGuard(), theirs.unlock(PASSWORD))
    assert {n: (ours.path / n).read_bytes() for n in files} == files


def test_a_domain_without_domain_sig_is_refused_until_resigned(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    (domain.path / "domain.sig").unlink()  # as a domain made by an earlier taonet
    with pytest.raises(
        ConfigError, match=r"no domain\.sig.*taonet domain policy --domain .* --resign"
    ):
        Domain.load(domain.path)
    with pytest.raises(ConfigError):
        Domain.resign(domain.path, b"wrong password")
    assert not (domain.path / "domain.sig").exists()
    resigned, changes = Domain.resign(domain.path, PASSWORD)
    assert changes == ["no earlier signature (domain.sig was missing)"]
    assert resigned.guard == domain.guard
    assert Domain.load(domain.path).guard == domain.guard


def test_resign_signs_an_intended_edit(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    serial = Domain.load(domain.path).config_serial
    edit(domain, 'guard = "ACL"', 'guard = "Conservative"')
    resigned, changes = Domain.resign(domain.path, PASSWORD)
    assert changes == [
        "domain.guard is 'Conservative' but the policy key signed 'ACL'",
        f"the guard is {ConservativeGuard().subprincipal()} but the policy key signed "
        f"{domain.guard.subprincipal()}",
    ]
    assert isinstance(resigned.guard, ConservativeGuard)
    assert resigned.config_serial == serial + 1
    resigned, changes = Domain.resign(domain.path, PASSWORD)
    assert changes == []


def test_resign_starts_an_acl_domain_with_no_rules(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(guard="Liberal")
    edit(domain, 'guard = "Liberal"', 'guard = "ACL"')
    resigned, _ = Domain.resign(domain.path, PASSWORD)
    assert resigned.guard == ACLGuard()
    assert Domain.load(domain.path).guard == ACLGuard()


def test_resign_refuses_rules_not_signed_by_the_policy_key(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = acl_domain(make_domain), acl_domain(make_domain)
    shutil.copyfile(theirs.path / "acls", ours.path / "acls")
    sig = (ours.path / "domain.sig").read_bytes()
    with pytest.raises(ConfigError, match="acls: refused"):
        Domain.resign(ours.path, PASSWORD)
    assert (ours.path / "domain.sig").read_bytes() == sig


def test_resign_cannot_adopt_another_policy_certificate(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = acl_domain(make_domain), make_domain()
    shutil.copyfile(theirs.path / "policy_keys/cert.der", ours.path / "policy_keys/cert.der")
    with pytest.raises(ConfigError, match="does not match the policy certificate"):
        Domain.resign(ours.path, PASSWORD)


# -- rollback: an earlier signed configuration put back with the files it signed ----------


def snapshot(domain: Domain, *names: str) -> dict[str, bytes]:
    """What someone who can read the domain directory keeps for later."""
    return {name: (domain.path / name).read_bytes() for name in names}


def put_back(domain: Domain, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (domain.path / name).write_bytes(data)


def test_rules_and_domain_sig_rolled_back_together_are_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    signer = domain.unlock(PASSWORD)
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(BAD)), signer)
    allowed_bad = snapshot(domain, "acls", "domain.sig")
    domain.save_guard(domain.guard.without_rule(domain.program_rule(BAD)), signer)
    bad = domain.program_name(
        BAD, host=auth.Prin("key", auth.Bytes(b"\x01" * 32), auth.SubPrin(()))
    )
    assert isinstance(bad, auth.Prin)
    with pytest.raises(AuthorizationError):
        Domain.load(domain.path).guard.check(bad, "Execute")
    put_back(domain, allowed_bad)  # every byte signed by the policy key, once
    with pytest.raises(ConfigError, match=r"rolled back: serial 3 is older than 4 seen before"):
        Domain.load(domain.path)
    with pytest.raises(ConfigError, match="rolled back"):
        DomainService.open(domain.path, PASSWORD)


def test_a_guard_kind_rolled_back_to_liberal_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    from taonet.hosts.linux import LinuxHostConfig

    domain = make_domain(guard="Liberal")
    liberal = snapshot(domain, "domain.toml", "domain.sig")
    edit(domain, 'guard = "Liberal"', 'guard = "ACL"')
    assert Domain.resign(domain.path, PASSWORD)[0].guard == ACLGuard()
    put_back(domain, liberal)
    with pytest.raises(
        ConfigError, match=r"domain\.sig: refused: domain configuration rolled back"
    ):
        Domain.load(domain.path)
    with pytest.raises(ConfigError, match="serial 1 is older than 2"):
        LinuxHostConfig(kind="root", domain=str(domain.path)).pin_domain()


def test_resign_after_a_rollback_says_so_and_signs_above_the_record(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(guard="Liberal")
    liberal = snapshot(domain, "domain.toml", "domain.sig")
    edit(domain, 'guard = "Liberal"', 'guard = "ACL"')
    Domain.resign(domain.path, PASSWORD)
    Domain.resign(domain.path, PASSWORD)
    put_back(domain, liberal)
    resigned, changes = Domain.resign(domain.path, PASSWORD)
    assert changes == [
        "the earlier signature (serial 1) is older than serial 3 signed before: the "
        "domain's files had been rolled back"
    ]
    assert resigned.config_serial == 4
    assert isinstance(Domain.load(domain.path).guard, LiberalGuard)


def test_unlock_records_the_serial_of_a_domain_made_before_records(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = acl_domain(make_domain)
    older = snapshot(domain, "acls", "domain.sig")
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(BAD)), domain.unlock(PASSWORD))
    record = domain.path / "policy_keys/config_serial"
    record.unlink()  # as a domain made by an earlier taonet
    assert Domain.load(domain.path).config_serial == 3
    DomainService.open(domain.path, PASSWORD).close()  # unlocks the policy key: records serial 3
    put_back(domain, older)
    with pytest.raises(ConfigError, match="serial 2 is older than 3"):
        Domain.load(domain.path)


def test_the_serial_record_never_goes_down(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from taonet.domain._signed_config import SerialRecord

    path, key, other = tmp_path / "record", "ab" * 32, "cd" * 32
    assert SerialRecord.read(path) is None
    assert SerialRecord.highest(path, key) == 0
    SerialRecord.raise_to(path, key, 5, mode=0o600)
    SerialRecord.raise_to(path, key, 4, mode=0o600)
    assert SerialRecord.read(path) == SerialRecord(key, 5)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SerialRecord.highest(path, other) == 0  # about another key: says nothing
    SerialRecord.raise_to(path, other, 1, mode=0o600)
    assert SerialRecord.read(path) == SerialRecord(other, 1)


@pytest.mark.parametrize(
    "contents",
    [
        b"",
        b"\xff\xfe",
        b"serial = 5\n",
        b'policy_key = "' + b"ab" * 32 + b'"\nserial = -1\n',
        b'policy_key = "' + b"ab" * 32 + b'"\nserial = true\n',
        b'policy_key = "' + b"AB" * 32 + b'"\nserial = 5\n',
        b'policy_key = "' + b"ab" * 32 + b'"\nserial = 5\nextra = 1\n',
        b"x" * 5000,
    ],
)
def test_a_damaged_serial_record_is_refused_not_taken_for_none(  # type: ignore[no-untyped-def]
    make_domain, contents: bytes
) -> None:
    domain = acl_domain(make_domain)
    (domain.path / "policy_keys/config_serial").write_bytes(contents)
    with pytest.raises(ConfigError, match=r"config_serial (is not a serial record|is \d+ bytes)"):
        Domain.load(domain.path)
