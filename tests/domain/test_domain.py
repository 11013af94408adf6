"""Domain directories: creation from templates, loading, policy changes, names."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from taonet import ConfigError, auth
from taonet.crypto import KdfParams
from taonet.domain import (
    ACLGuard,
    ConservativeGuard,
    Domain,
    DomainTemplate,
    LiberalGuard,
    measure_file,
)
from tests.conftest import PASSWORD


def test_create_and_load(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(name="acme")
    assert isinstance(domain.guard, ACLGuard)
    loaded = Domain.load(domain.path)
    assert loaded.config == domain.config
    assert loaded.config.name == "acme"
    assert loaded.policy_principal == domain.policy_principal
    assert loaded.policy_principal.type == "key"
    assert loaded.guard == domain.guard
    assert stat.S_IMODE((domain.path / "policy_keys" / "keys").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("kind", "cls"), [("Liberal", LiberalGuard), ("Conservative", ConservativeGuard)]
)
def test_trivial_guard_domains(make_domain, kind: str, cls: type) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(guard=kind)
    assert isinstance(Domain.load(domain.path).guard, cls)
    assert not (domain.path / "acls").exists()


def test_create_refuses_an_existing_domain(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    with pytest.raises(ConfigError, match="already holds a domain"):
        Domain.create(domain.path, DomainTemplate(), PASSWORD, kdf=KdfParams.for_tests())


def test_unlock(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    assert domain.unlock(PASSWORD).public_key_der() == domain.policy_verifier.public_key_der()
    with pytest.raises(ConfigError):
        domain.unlock(b"wrong")


def test_template_file(tmp_path: Path) -> None:
    program = tmp_path / "prog.sh"
    program.write_bytes(b"#!/bin/sh\necho hi\n")
    template = tmp_path / "t.toml"
    template.write_text(
        '[domain]\nname = "from-template"\nguard = "ACL"\n'
        '[policy_key]\ncurve = "P-384"\n'
        "[certificates]\nprogram_validity_days = 7\n"
        '[acl]\nrules = [\'Authorized(key([0102]), "Read")\']\nprograms = ["prog.sh"]\n'
    )
    domain = Domain.create(
        tmp_path / "d", DomainTemplate.load(template), PASSWORD, kdf=KdfParams.for_tests()
    )
    loaded = Domain.load(tmp_path / "d")
    assert loaded.config.name == "from-template"
    assert loaded.config.program_validity_days == 7
    assert loaded.unlock(PASSWORD).key_type == "ecdsap384"
    assert isinstance(loaded.guard, ACLGuard)
    name = domain.program_name(measure_file(program), host=auth.key_principal(b"host"))
    assert isinstance(name, auth.Prin)
    assert loaded.guard.is_authorized(name, "Execute")
    assert loaded.guard.is_authorized(auth.parse_prin("key([0102])"), "Read")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[domain\n", "not valid TOML"),
        ('[domain]\nguard = "Permissive"\n', "guard must be one of"),
        ('[policy_key]\ncurve = "P-521"\n', "curve"),
        ("[certificates]\nhost_validity_days = 0\n", "days"),
        ("[certificates]\nhost_validity_days = true\n", "int"),
        ("[acl]\nrules = ['not a formula (']\n", "not a formula"),
        ("[acl]\nprograms = ['does-not-exist']\n", "cannot measure"),
        ("[extra]\n", "unknown section"),
        ("[domain]\nguard = \"Liberal\"\n[acl]\nrules = ['true']\n", "takes no rules"),
    ],
)
def test_bad_templates_are_clear_errors(tmp_path: Path, text: str, error: str) -> None:
    template = tmp_path / "t.toml"
    template.write_text(text)
    with pytest.raises(ConfigError, match=error):
        Domain.create(
            tmp_path / "d", DomainTemplate.load(template), PASSWORD, kdf=KdfParams.for_tests()
        )
    # Nothing is left behind by a refused template.
    assert not (tmp_path / "d" / "domain.toml").exists()


def test_hand_edited_guard_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    signer = domain.unlock(PASSWORD)
    domain.save_guard(
        domain.guard.with_rule(auth.parse_form('Authorized(key([01]), "Execute")')), signer
    )
    acls = domain.path / "acls"
    data = bytearray(acls.read_bytes())
    index = data.index(b'"Execute"')
    data[index + 1 : index + 8] = b"Admin!!"
    acls.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="refused"):
        Domain.load(domain.path)


def test_guard_from_another_domain_is_refused(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make_domain(), make_domain()
    (ours.path / "acls").write_bytes((theirs.path / "acls").read_bytes())
    with pytest.raises(ConfigError, match="refused"):
        Domain.load(ours.path)


def test_save_guard_requires_the_policy_key(make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make_domain(), make_domain()
    with pytest.raises(ConfigError, match="only the policy key"):
        ours.save_guard(ours.guard, theirs.unlock(PASSWORD))


def test_missing_or_corrupt_files(make_domain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="not a domain directory"):
        Domain.load(tmp_path / "nowhere")
    domain = make_domain()
    (domain.path / "policy_keys" / "cert.der").write_bytes(b"garbage")
    with pytest.raises(ConfigError):
        Domain.load(domain.path)


def test_program_names(make_domain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    program = tmp_path / "p"
    program.write_bytes(b"code")
    h = measure_file(program)
    tail = domain.program_name(h)
    assert isinstance(tail, auth.PrinTail)
    assert (
        str(tail)
        == f"ext.Program([{h.hex()}]).PolicyKey([{domain.policy_principal.key_hash.value.hex()}])"
    )
    host = auth.key_principal(b"some host key")
    name = domain.program_name(h, host=host)
    assert isinstance(name, auth.Prin)
    assert name.is_sub_principal_of(host)
    assert name.ext == tail.ext
