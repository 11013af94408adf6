"""The pure EK/credential functions, checked against a real swtpm: templates of the
TPM's own EKs, MakeCredential -> the TPM's ActivateCredential for the three EK kinds,
cross-checked with the TPM's own MakeCredential, and the attacks (another EK, another
key's name, EK certificates from untrusted, same-named or expired CAs, public areas
that differ from the certificate or the template, quote keys that are not)."""

from __future__ import annotations

import datetime as dt
import os
import struct
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taonet import AuthenticationError, CodecError, HostError
from taonet.attestation import tpm2_credential as tc
from taonet.attestation._tpm2_credential import (
    ADMIN_WITH_POLICY,
    DECRYPT,
    FIXED_TPM,
    RESTRICTED,
    SIGN_ENCRYPT,
    USER_WITH_AUTH,
)
from tests.tpm2_helpers import make_ca, make_ek_cert

KINDS = {"p256": 0x01C0000A, "rsa": 0x01C00002, "p384": 0x01C00016}
TEMPLATE = {"rsa": "L-1", "p256": "L-2", "p384": "H-3"}


@pytest.fixture(scope="module")
def tpm(swtpm: Any) -> Any:
    """H3's session swtpm and its tpm2-pytss setup jobs."""
    from taonet.hosts.tpm2 import _setup

    return _setup


@pytest.fixture(scope="module")
def eks(swtpm: Any, tpm: Any) -> dict[str, tuple[x509.Certificate, bytes]]:
    """Each EK kind's (certificate, TPMT_PUBLIC) as the TPM reports them."""
    out = {}
    for kind, index in KINDS.items():
        der, public = tpm.read_ek(swtpm.tcti, index=index)
        out[kind] = (tc.load_ek_certificate(der), public)
    return out


@pytest.fixture(scope="module")
def quote_key(swtpm: Any, tpm: Any) -> tuple[bytes, bytes]:
    """An ECC quote key: (TPM2B_PRIVATE, TPM2B_PUBLIC)."""
    return tpm.create_quote_key(swtpm.tcti, "ecc")  # type: ignore[no-any-return]


def cas(swtpm: Any) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p) for p in swtpm.manufacturer_ca_pems()]


@pytest.mark.parametrize("kind", list(KINDS))
def test_ek_chain_template_and_activate(
    swtpm: Any, tpm: Any, eks: Any, quote_key: tuple[bytes, bytes], kind: str
) -> None:
    """The TPM's EK: its certificate chains to the manufacturer CA (intermediate, then
    root), its public area is its certificate's key and a TCG template, and a
    credential made in Python for it is recovered by the TPM's ActivateCredential."""
    cert, public = eks[kind]
    chain = tc.check_ek_certificate(cert, cas(swtpm), now_ns=time.time_ns())
    assert len(chain) == 3
    ek, template = tc.check_ek_public(cert, public)
    assert template.name == TEMPLATE[kind]
    quote = tc.parse_public(tc.tpmt_public_from_tpm2b(quote_key[1]))
    tc.check_quote_key(quote)
    secret = os.urandom(32)
    blob, encrypted = tc.make_credential(ek, secret, quote.name)
    got = tpm.activate_credential(swtpm.tcti, *quote_key, blob, encrypted, ek_index=KINDS[kind])
    assert got == secret


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_shape_as_the_tpms_own_make_credential(
    swtpm: Any, tpm: Any, eks: Any, quote_key: tuple[bytes, bytes], kind: str
) -> None:
    """The TPM's own MakeCredential (the EK loaded as an external key) gives a blob and
    secret of the same sizes as ours, and the TPM activates both."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC

    ek = tc.parse_public(eks[kind][1])
    name = tc.parse_public(tc.tpmt_public_from_tpm2b(quote_key[1])).name
    secret = os.urandom(32)
    with tpm._esapi(swtpm.tcti) as ectx:
        area, _ = TPMT_PUBLIC.unmarshal(ek.raw)
        handle = ectx.load_external(TPM2B_PUBLIC(publicArea=area), None, ESYS_TR.NULL)
        try:
            blob, encrypted = ectx.make_credential(handle, secret, name)
        finally:
            ectx.flush_context(handle)
    theirs = (bytes(blob.credential), bytes(encrypted.secret))
    ours = tc.make_credential(ek, secret, name)
    assert [len(x) for x in ours] == [len(x) for x in theirs]
    for candidate in (ours, theirs):
        got = tpm.activate_credential(swtpm.tcti, *quote_key, *candidate, ek_index=KINDS[kind])
        assert got == secret


def test_credential_for_another_ek_refused(
    swtpm: Any, tpm: Any, eks: Any, quote_key: tuple[bytes, bytes]
) -> None:
    """A blob made for another P-256 EK (same template, other key), for this TPM's RSA
    EK, or bound to another key's name, is refused by ActivateCredential on this TPM's
    P-256 EK."""
    real = tc.parse_public(eks["p256"][1])
    other = _with_ecc_key(real, ec.generate_private_key(ec.SECP256R1()).public_key())
    rsa_ek = tc.parse_public(eks["rsa"][1])
    name = tc.parse_public(tc.tpmt_public_from_tpm2b(quote_key[1])).name
    attempts = [
        tc.make_credential(other, os.urandom(32), name),
        tc.make_credential(rsa_ek, os.urandom(32), name),
        tc.make_credential(real, os.urandom(32), b"\x00\x0b" + bytes(32)),
    ]
    for blob, encrypted in attempts:
        with pytest.raises(HostError):
            tpm.activate_credential(swtpm.tcti, *quote_key, blob, encrypted, ek_index=KINDS["p256"])


def _with_ecc_key(area: tc.TpmPublic, key: ec.EllipticCurvePublicKey) -> tc.TpmPublic:
    n = (key.curve.key_size + 7) // 8
    nums = key.public_numbers()
    x, y = nums.x.to_bytes(n, "big"), nums.y.to_bytes(n, "big")
    head = area.raw[: len(area.raw) - (4 + 2 * n)]
    return tc.parse_public(head + struct.pack(">H", n) + x + struct.pack(">H", n) + y)


# ------------------------------------------------------------ EK certificate attacks


def test_ek_cert_from_untrusted_ca_refused(swtpm: Any, eks: Any) -> None:
    cert = eks["rsa"][0]
    unrelated, _ = make_ca("some other manufacturer")
    with pytest.raises(AuthenticationError, match="not a manufacturer CA this domain trusts"):
        tc.check_ek_certificate(cert, [unrelated], now_ns=time.time_ns())
    # Only the root listed (the intermediate that signed it is not): refused.
    root = cas(swtpm)[0]
    with pytest.raises(AuthenticationError, match="not a manufacturer CA"):
        tc.check_ek_certificate(cert, [root], now_ns=time.time_ns())


def test_ek_cert_against_same_named_ca_with_another_key_refused(swtpm: Any, eks: Any) -> None:
    """A CA with the EK certificate issuer's exact name but another key: refused; and an
    EK certificate forged under that impostor is refused against the real list."""
    cert = eks["p384"][0]
    real_root, real_intermediate = cas(swtpm)
    impostor_key = rsa.generate_private_key(65537, 2048)
    impostor, _ = make_ca(
        real_intermediate.subject, key=impostor_key, issuer=(real_root.subject, impostor_key)
    )
    with pytest.raises(AuthenticationError, match="another key"):
        tc.check_ek_certificate(cert, [impostor, real_root], now_ns=time.time_ns())
    # A forged EK certificate for an attacker's key, "issued" by the impostor.
    forged = make_ek_cert(
        ec.generate_private_key(ec.SECP384R1()).public_key(), impostor, impostor_key
    )
    with pytest.raises(AuthenticationError, match="another key"):
        tc.check_ek_certificate(forged, cas(swtpm), now_ns=time.time_ns())
    # Both the impostor and the real one listed: the real one is found for the real cert.
    tc.check_ek_certificate(cert, [impostor, *cas(swtpm)], now_ns=time.time_ns())


def test_expired_and_not_yet_valid_refused(swtpm: Any, eks: Any) -> None:
    cert = eks["rsa"][0]
    before = int(cert.not_valid_before_utc.timestamp() * 1e9) - 10**9
    with pytest.raises(AuthenticationError, match="not valid now"):
        tc.check_ek_certificate(cert, cas(swtpm), now_ns=before)
    root, root_key = make_ca("root")
    inter, inter_key = make_ca("inter", issuer=(root.subject, root_key))
    now = dt.datetime.now(dt.UTC)
    ek_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    expired = make_ek_cert(
        ek_key,
        inter,
        inter_key,
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    with pytest.raises(AuthenticationError, match=r"EK certificate .* not valid now"):
        tc.check_ek_certificate(expired, [inter, root], now_ns=time.time_ns())
    good = make_ek_cert(ek_key, inter, inter_key)
    assert len(tc.check_ek_certificate(good, [inter, root], now_ns=time.time_ns())) == 3
    # An expired intermediate.
    old_inter, old_key = make_ca(
        "inter",
        issuer=(root.subject, root_key),
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    under_old = make_ek_cert(ek_key, old_inter, old_key)
    with pytest.raises(AuthenticationError, match=r"manufacturer CA .* not valid now"):
        tc.check_ek_certificate(under_old, [old_inter, root], now_ns=time.time_ns())


def test_issuer_not_a_ca_and_wrong_eku_refused() -> None:
    root, root_key = make_ca("root")
    not_ca, not_ca_key = make_ca("leafy", issuer=(root.subject, root_key), ca=False)
    ek_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(AuthenticationError, match="is not a CA"):
        tc.check_ek_certificate(
            make_ek_cert(ek_key, not_ca, not_ca_key), [not_ca, root], now_ns=time.time_ns()
        )
    tls = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.1")
    with pytest.raises(AuthenticationError, match=r"2\.23\.133\.8\.1"):
        tc.check_ek_certificate(
            make_ek_cert(ek_key, root, root_key, eku=tls), [root], now_ns=time.time_ns()
        )


# ------------------------------------------------------------ EK public area attacks


def test_ek_public_not_the_certificates_key_refused(eks: Any) -> None:
    cert = eks["p384"][0]
    real = tc.parse_public(eks["p384"][1])
    other = _with_ecc_key(real, ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(AuthenticationError, match="not the EK certificate's key"):
        tc.check_ek_public(cert, other.raw)
    # The RSA EK's area sent with the P-384 EK's certificate.
    with pytest.raises(AuthenticationError, match="not the EK certificate's key"):
        tc.check_ek_public(cert, eks["rsa"][1])


def _patch(area: tc.TpmPublic, *, attributes: int | None = None, policy: bytes | None = None,
           name_alg: int | None = None) -> bytes:  # fmt: skip
    raw = area.raw
    out = bytearray(raw[:2])
    out += struct.pack(">H", area.name_alg if name_alg is None else name_alg)
    out += struct.pack(">I", area.attributes if attributes is None else attributes)
    old_policy_len = struct.unpack_from(">H", raw, 8)[0]
    new_policy = area.auth_policy if policy is None else policy
    out += struct.pack(">H", len(new_policy)) + new_policy
    out += raw[10 + old_policy_len :]
    return bytes(out)


def _changed(area: tc.TpmPublic, change: dict[str, Any]) -> bytes:
    """``area`` with a test's ``change``: ``attributes_xor`` flips attribute bits,
    ``policy`` and ``name_alg`` replace those fields."""
    xor = change.get("attributes_xor")
    return _patch(
        area,
        attributes=None if xor is None else area.attributes ^ xor,
        policy=change.get("policy"),
        name_alg=change.get("name_alg"),
    )


@pytest.mark.parametrize(
    "change",
    [
        {"attributes_xor": USER_WITH_AUTH},  # no policy needed to use it
        {"attributes_xor": ADMIN_WITH_POLICY},
        {"attributes_xor": RESTRICTED},
        {"policy": bytes(48)},  # an empty policy anyone satisfies
        {"policy": b""},
        {"name_alg": 0x000B},  # SHA-256 name on the P-384 template
    ],
)
def test_ek_public_not_a_template_refused(eks: Any, change: dict[str, Any]) -> None:
    cert = eks["p384"][0]
    real = tc.parse_public(eks["p384"][1])
    raw = _changed(real, change)
    with pytest.raises(AuthenticationError, match="matches no TCG EK template"):
        tc.check_ek_public(cert, raw)
    with pytest.raises(AuthenticationError):
        tc.make_credential(tc.parse_public(raw), os.urandom(32), b"\x00\x0b" + bytes(32))


# ------------------------------------------------------------ quote key attacks


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attributes_xor": RESTRICTED}, "restricted"),
        ({"attributes_xor": FIXED_TPM}, "fixedTPM"),
        ({"attributes_xor": SIGN_ENCRYPT}, "sign"),
        ({"attributes_xor": DECRYPT}, "decrypt"),
        ({"name_alg": 0x000C}, "nameAlg"),
    ],
)
def test_quote_key_not_restricted_signing_refused(
    quote_key: tuple[bytes, bytes], change: dict[str, Any], message: str
) -> None:
    real = tc.parse_public(tc.tpmt_public_from_tpm2b(quote_key[1]))
    tc.check_quote_key(real)
    raw = _changed(real, change)
    with pytest.raises(AuthenticationError, match=message):
        tc.check_quote_key(tc.parse_public(raw))


def test_rsa_quote_key_accepted(swtpm: Any, tpm: Any) -> None:
    _, public = tpm.create_quote_key(swtpm.tcti, "rsa")
    area = tc.parse_public(tc.tpmt_public_from_tpm2b(public))
    tc.check_quote_key(area)
    assert area.key_bits == 2048


def test_ek_rejected_as_quote_key(eks: Any) -> None:
    ek = tc.parse_public(eks["rsa"][1])
    with pytest.raises(AuthenticationError, match="sign"):
        tc.check_quote_key(ek)


# ------------------------------------------------------------ parse bounds


def test_parse_public_bounds(eks: Any) -> None:
    raw = eks["rsa"][1]
    for cut in (0, 1, 5, 10, len(raw) - 1):
        with pytest.raises(CodecError):
            tc.parse_public(raw[:cut])
    with pytest.raises(CodecError, match="trailing"):
        tc.parse_public(raw + b"\0")
    with pytest.raises(CodecError, match="limit"):
        tc.parse_public(raw + bytes(tc.MAX_TPMT_PUBLIC))
    # A TPM2B length past the data.
    bad = raw[:8] + b"\xff\xff" + raw[10:]
    with pytest.raises(CodecError):
        tc.parse_public(bad)
    assert tc.tpmt_public_from_tpm2b(struct.pack(">H", len(raw)) + raw) == raw


def test_point_off_curve_refused(eks: Any) -> None:
    real = tc.parse_public(eks["p384"][1])
    raw = bytearray(real.raw)
    raw[-1] ^= 1
    with pytest.raises(CodecError, match="not on the curve"):
        tc.parse_public(bytes(raw))


def test_kdfa_vector() -> None:
    """KDFa against the value the TPM spec's KDFa gives for a known input (computed
    independently with the counter-mode definition)."""
    import hashlib
    import hmac

    key, label, u, v = b"k" * 32, b"STORAGE", b"u", b"v"
    expect = hmac.new(key, b"\0\0\0\1STORAGE\0uv\0\0\0\x80", hashlib.sha256).digest()[:16]
    assert tc.kdfa("sha256", key, label, u, v, 128) == expect
    assert len(tc.kdfa("sha384", key, label, u, v, 256)) == 32
    assert len(tc.kdfe("sha256", b"z", b"IDENTITY", u, v, 512)) == 64


def test_imports_without_trio() -> None:
    """The credential functions are part of the pure core (a quote service or a
    verifier uses them without a TSS or trio)."""
    import subprocess
    import sys

    code = (
        "import sys, taonet.attestation.tpm2_credential; "
        "assert 'trio' not in sys.modules and 'tpm2_pytss' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_unprocessed_critical_extension_refused() -> None:
    """A CA that limits itself with critical name constraints: this check does not
    process them, so it refuses the chain rather than trust the CA beyond them."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    root, _ = make_ca("constrained", key=root_key, extensions=[constraints])
    ek = make_ek_cert(ec.generate_private_key(ec.SECP256R1()).public_key(), root, root_key)
    with pytest.raises(AuthenticationError, match="critical extension"):
        tc.check_ek_certificate(ek, [root], now_ns=time.time_ns())


def test_ek_key_usage_checked_when_present_and_eku_may_be_missing() -> None:
    """Any non-CA end-entity certificate of a listed CA is not an EK certificate: one
    whose key usage does not allow what an EK does (a signing certificate) is refused,
    right in everything else; the EK's own usage passes; a missing EKU (as on many
    vendors' EK certificates) and a missing key usage are accepted."""
    root, root_key = make_ca("vendor root")
    ecc_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    now = time.time_ns()
    for key, wrong, right, label in (
        (ecc_key, "key_encipherment", "key_agreement", "keyAgreement"),
        (rsa_key, "key_agreement", "key_encipherment", "keyEncipherment"),
    ):
        for usage in (("digital_signature",), (wrong,)):
            for with_eku in (True, False):
                signing = make_ek_cert(key, root, root_key, usage=usage, with_eku=with_eku)
                with pytest.raises(AuthenticationError, match=f"key usage lacks {label}"):
                    tc.check_ek_certificate(signing, [root], now_ns=now)
        for with_eku in (True, False):
            good = make_ek_cert(key, root, root_key, usage=(right,), with_eku=with_eku)
            assert tc.check_ek_certificate(good, [root], now_ns=now) == [good, root]
        bare = make_ek_cert(key, root, root_key, with_eku=False)
        assert tc.check_ek_certificate(bare, [root], now_ns=now) == [bare, root]
