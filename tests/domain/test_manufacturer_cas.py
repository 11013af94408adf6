"""The TPM manufacturer CA list bound into the domain's signed configuration: its
SHA-256 is a field of the statement ``domain.sig`` signs, so a hand-edited list, a
planted or removed one, and an older signed list put back with its ``domain.sig`` are
all refused (s14/r6: a removed CA trusted again)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import CodecError, ConfigError
from taonet.domain import ACLGuard, Domain
from taonet.domain._signed_config import SignedConfig, read_signed_config
from taonet.quoteservice import (
    MANUFACTURER_CAS_FILE,
    add_manufacturer_cas,
    manufacturer_cas,
    remove_manufacturer_cas,
)
from taonet_services.quote_service import QuoteService
from tests.conftest import PASSWORD, MakeDomain


def _ca(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _statement(domain: Domain) -> SignedConfig:
    return read_signed_config((domain.path / "domain.sig").read_bytes(), domain.policy_verifier)


def _names(domain: Domain) -> list[str]:
    return [ca.subject.rfc4514_string() for ca in manufacturer_cas(domain)]


def test_a_domain_without_cas_signs_no_field(make_domain: MakeDomain) -> None:
    """No list, no field: the statement is the one earlier domains signed, so they load."""
    domain = make_domain()
    assert _statement(domain).manufacturer_cas_sha256 is None
    assert b"manufacturer_cas" not in (domain.path / "domain.sig").read_bytes()
    assert manufacturer_cas(Domain.load(domain.path)) == []


def test_adding_and_removing_signs_a_new_serial(make_domain: MakeDomain) -> None:
    domain = make_domain()
    signer = domain.unlock(PASSWORD)
    serial = domain.config_serial
    root_b = _ca("Root B")
    add_manufacturer_cas(domain, signer, _ca("Root A") + root_b)
    assert domain.config_serial == serial + 1
    loaded = Domain.load(domain.path)
    assert loaded.config_serial == serial + 1
    assert _names(loaded) == ["CN=Root A", "CN=Root B"]
    assert _statement(domain).manufacturer_cas_sha256 is not None
    text = (domain.path / MANUFACTURER_CAS_FILE).read_text()
    assert text.startswith("# taonet: the manufacturer CAs")
    assert "# CN=Root A\n" in text
    with pytest.raises(ConfigError, match="none of these"):  # same name, another key
        remove_manufacturer_cas(domain.path, signer, _ca("Root B"))
    remove_manufacturer_cas(domain.path, signer, root_b)  # a directory: loaded and checked
    loaded = Domain.load(domain.path)
    assert (loaded.config_serial, _names(loaded)) == (serial + 2, ["CN=Root A"])


def test_a_planted_list_is_refused(make_domain: MakeDomain) -> None:
    """No list signed; a file put in the directory: refused, the field named."""
    domain = make_domain()
    (domain.path / MANUFACTURER_CAS_FILE).write_bytes(_ca("Evil Root"))
    with pytest.raises(ConfigError, match=r"manufacturer_cas\.pem: refused: .* signed absent"):
        Domain.load(domain.path)
    with pytest.raises(ConfigError, match="signed absent"):
        QuoteService.open(domain.path, PASSWORD)


def test_a_hand_edited_or_removed_list_is_refused(make_domain: MakeDomain) -> None:
    domain = make_domain()
    add_manufacturer_cas(domain, domain.unlock(PASSWORD), _ca("Root A"))
    path = domain.path / MANUFACTURER_CAS_FILE
    good = path.read_bytes()
    path.write_bytes(good + _ca("Evil Root"))
    with pytest.raises(ConfigError, match="but the policy key signed SHA-256"):
        Domain.load(domain.path)
    with pytest.raises(ConfigError, match="but the policy key signed SHA-256"):
        QuoteService.open(domain.path, PASSWORD)
    # Even a change that no PEM reader sees (a comment) is a change.
    path.write_bytes(good.replace(b"# CN=Root A", b"# CN=Root Z"))
    with pytest.raises(ConfigError, match="but the policy key signed SHA-256"):
        Domain.load(domain.path)
    path.unlink()
    with pytest.raises(ConfigError, match=r"is absent \(no CA listed\) but the policy key"):
        Domain.load(domain.path)


def test_an_older_signed_list_put_back_is_refused(make_domain: MakeDomain) -> None:
    """s14/r6: a CA removed; the older list put back, with and without the older
    domain.sig: refused either way, and the quote service does not start."""
    domain = make_domain()
    signer = domain.unlock(PASSWORD)
    compromised = _ca("Compromised Root")
    add_manufacturer_cas(domain, signer, _ca("Good Root") + compromised)
    old_cas = (domain.path / MANUFACTURER_CAS_FILE).read_bytes()
    old_sig = (domain.path / "domain.sig").read_bytes()
    remove_manufacturer_cas(domain, signer, compromised)
    assert _names(Domain.load(domain.path)) == ["CN=Good Root"]
    (domain.path / MANUFACTURER_CAS_FILE).write_bytes(old_cas)
    with pytest.raises(ConfigError, match="but the policy key signed"):
        Domain.load(domain.path)
    (domain.path / "domain.sig").write_bytes(old_sig)
    with pytest.raises(ConfigError, match="domain configuration rolled back"):
        Domain.load(domain.path)
    with pytest.raises(ConfigError, match="domain configuration rolled back") as caught:
        QuoteService.open(domain.path, PASSWORD)
    assert "\n" not in str(caught.value)


def test_resign_binds_the_list_as_it_stands(make_domain: MakeDomain) -> None:
    """An operator who wrote the file by hand on purpose signs it with --resign."""
    domain = make_domain()
    (domain.path / MANUFACTURER_CAS_FILE).write_bytes(_ca("Hand Root"))
    resigned, changes = Domain.resign(domain.path, PASSWORD)
    assert any(line.startswith("the manufacturer CA list") for line in changes)
    assert _names(resigned) == ["CN=Hand Root"]


def test_a_malformed_digest_field_is_a_codec_error(make_domain: MakeDomain) -> None:
    statement = _statement(make_domain())
    doc = json.loads(statement.to_bytes())
    for bad in ("ab", 5, "G" * 64, None):
        doc["manufacturer_cas_sha256"] = bad
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        with pytest.raises(CodecError):
            SignedConfig.from_bytes(data)


def test_a_stale_domain_object_does_not_sign_away_the_list(make_domain: MakeDomain) -> None:
    """A Domain loaded before the list changed (another writer) signs nothing: it would
    drop the list from the configuration, or bind one it never read."""
    domain = make_domain(guard="ACL")
    stale = Domain.load(domain.path)
    signer = domain.unlock(PASSWORD)
    add_manufacturer_cas(domain.path, signer, _ca("Root A"))
    assert isinstance(stale.guard, ACLGuard)
    with pytest.raises(ConfigError, match="changed since this domain was loaded"):
        stale.save_guard(stale.guard.with_rule(stale.program_rule(b"\1" * 32)), signer)
    with pytest.raises(ConfigError, match="changed since this domain was loaded"):
        add_manufacturer_cas(stale, signer, _ca("Root B"))
    loaded = Domain.load(domain.path)  # nothing was written
    assert _names(loaded) == ["CN=Root A"]
    assert loaded.guard == stale.guard
