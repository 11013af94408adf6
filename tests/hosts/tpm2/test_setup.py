"""The one-time tpm2-pytss jobs of the TPM host, against a real swtpm."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import ConfigError, HostError

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

T = TypeVar("T")
P256_EK_INDEX, RSA_EK_INDEX, P384_EK_INDEX = 0x01C0000A, 0x01C00002, 0x01C00016
# The TCG EK PolicyA (PolicySecret(TPM_RH_ENDORSEMENT)) in SHA-256: L-1/L-2 authPolicy.
POLICY_A_SHA256 = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking TPM call, as the host makes it: in a worker thread, bounded."""
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


@pytest.fixture
def setup(swtpm_tcti: str) -> Iterator[Any]:
    """taonet.hosts.tpm2._setup (imported once the fixture made sure tpm2-pytss is here);
    checks after the test that the jobs left no transient object or session loaded."""
    from taonet.hosts.tpm2 import _setup

    before = set(_setup.loaded_handles(swtpm_tcti))
    yield _setup
    left = set(_setup.loaded_handles(swtpm_tcti)) - before
    assert not left, f"a job left these loaded: {sorted(map(hex, left))}"


# ---- pure parts -------------------------------------------------------------------------

GOOD_TCTIS = [
    ("swtpm:host=127.0.0.1,port=2321", ("swtpm", "host=127.0.0.1,port=2321")),
    ("swtpm:port=2321", ("swtpm", "host=127.0.0.1,port=2321")),
    ("swtpm:port=2321,host=127.0.0.2", ("swtpm", "host=127.0.0.2,port=2321")),
    ("swtpm:host=localhost,port=65534", ("swtpm", "host=localhost,port=65534")),
    ("device:/dev/tpmrm0", ("device", "/dev/tpmrm0")),
    ("device:/dev/tpm0", ("device", "/dev/tpm0")),
]
BAD_TCTIS = [
    "",
    "swtpm",
    "swtpm:",
    "swtpm:host=127.0.0.1",  # no port
    "swtpm:port=0",
    "swtpm:port=65535",  # the control port would be 65536
    "swtpm:port=99999999999999999999",
    "swtpm:port=-1",
    "swtpm:port=\uff12\uff13",  # fullwidth digits: str.isdigit() says yes
    "swtpm:port=1,port=2",
    "swtpm:port=1,bogus=2",
    "swtpm:host=a;rm -rf /,port=1",
    "swtpm:host=-x,port=1",
    "swtpm:port=1,",
    "mssim:port=2321",
    "tabrmd:",
    "device:",
    "device:tpmrm0",
    "device:/dev/../etc/passwd",
    "device:/tmp/tpm",
    "device:/dev/tpm0 ",
    "swtpm:host=" + "a" * 300 + ",port=1",
]
#: Well-formed, but the TPM would be reached over a network: commands in clear, empty
#: authorizations (the edit2 finding: such a TCTI was accepted silently).
REMOTE_TCTIS = [
    "swtpm:host=192.0.2.1,port=2321",
    "swtpm:port=2321,host=tpm.example",
    "swtpm:host=0.0.0.0,port=2321",
    "swtpm:host=10.0.0.1,port=2321",
    "swtpm:host=localhost.example,port=2321",
    "swtpm:host=127.0.0.1.nip.io,port=2321",
]


@pytest.mark.parametrize(("tcti", "expected"), GOOD_TCTIS)
def test_parse_tcti_accepts(tcti: str, expected: tuple[str, str]) -> None:
    from taonet.hosts.tpm2 import parse_tcti

    assert parse_tcti(tcti) == expected


@pytest.mark.parametrize("tcti", BAD_TCTIS)
def test_parse_tcti_refuses(tcti: str) -> None:
    from taonet.hosts.tpm2 import parse_tcti

    with pytest.raises(ConfigError, match="TCTI"):
        parse_tcti(tcti)


@pytest.mark.parametrize("tcti", REMOTE_TCTIS)
def test_parse_tcti_refuses_a_swtpm_off_this_machine(tcti: str) -> None:
    from taonet.hosts.tpm2 import parse_tcti

    with pytest.raises(ConfigError, match=r"must be loopback.*unencrypted.*empty authorizations"):
        parse_tcti(tcti)


def test_templates_equal_tpm2_pytss_parse(setup: Any) -> None:
    """The hand-marshaled templates are what tpm2-pytss makes from the usual strings."""
    from tests.vectors.tpm2_swtpm import pytss_template

    for kind, ours in [
        ("primary", setup.PRIMARY_TEMPLATE),
        ("ecc", setup.QUOTE_KEY_TEMPLATES["ecc"]),
        ("rsa", setup.QUOTE_KEY_TEMPLATES["rsa"]),
    ]:
        theirs = pytss_template(kind)
        assert theirs.publicArea.marshal() == ours, kind


# ---- EK ---------------------------------------------------------------------------------


def _public_area(public: bytes) -> Any:
    from tpm2_pytss.types import TPMT_PUBLIC

    area, used = TPMT_PUBLIC.unmarshal(public)
    assert used == len(public)
    return area


def _pkix(area: Any) -> bytes:
    key = serialization.load_pem_public_key(area.to_pem())
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_read_ek_prefers_the_p256_ek(setup: Any, swtpm_tcti: str) -> None:
    """The default EK is the P-256 one whose certificate is at 0x01c0000a, and its
    public area (the TPM's own, from the TCG L-2 template) carries the certificate's key."""
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC

    der, public = await in_thread(setup.read_ek, swtpm_tcti)
    assert (der, public) == await in_thread(setup.read_ek, swtpm_tcti, index=P256_EK_INDEX)
    cert = x509.load_der_x509_certificate(der)
    area = _public_area(public)
    assert area.type == TPM2_ALG.ECC
    assert area.nameAlg == TPM2_ALG.SHA256
    assert area.parameters.eccDetail.curveID == TPM2_ECC.NIST_P256
    assert bytes(area.authPolicy) == POLICY_A_SHA256
    assert _pkix(area) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_read_ek_other_indices(setup: Any, swtpm_tcti: str) -> None:
    from tpm2_pytss.constants import TPM2_ALG

    _, rsa_public = await in_thread(setup.read_ek, swtpm_tcti, index=RSA_EK_INDEX)
    assert _public_area(rsa_public).type == TPM2_ALG.RSA
    _, p384_public = await in_thread(setup.read_ek, swtpm_tcti, index=P384_EK_INDEX)
    assert _public_area(p384_public).nameAlg == TPM2_ALG.SHA384
    with pytest.raises(HostError, match="no EK certificate at 0x01c00012"):
        await in_thread(setup.read_ek, swtpm_tcti, index=0x01C00012)


# ---- quote keys -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ecc", "rsa"])
async def test_create_quote_key_attributes(setup: Any, swtpm_tcti: str, alg: str) -> None:
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC

    private, public = await in_thread(setup.create_quote_key, swtpm_tcti, alg)
    assert TPM2B_PRIVATE.unmarshal(private)[1] == len(private)
    pub, used = TPM2B_PUBLIC.unmarshal(public)
    assert used == len(public)
    area = pub.publicArea
    attrs = int(area.objectAttributes)
    for required in (
        TPMA_OBJECT.FIXEDTPM,
        TPMA_OBJECT.FIXEDPARENT,
        TPMA_OBJECT.SENSITIVEDATAORIGIN,
        TPMA_OBJECT.RESTRICTED,
        TPMA_OBJECT.SIGN_ENCRYPT,
    ):
        assert attrs & int(required), required
    assert not attrs & int(TPMA_OBJECT.DECRYPT)
    assert area.nameAlg == TPM2_ALG.SHA256
    if alg == "ecc":
        assert area.type == TPM2_ALG.ECC
        assert area.parameters.eccDetail.curveID == TPM2_ECC.NIST_P256
        assert area.parameters.eccDetail.scheme.scheme == TPM2_ALG.ECDSA
        assert area.parameters.eccDetail.scheme.details.anySig.hashAlg == TPM2_ALG.SHA256
    else:
        assert area.type == TPM2_ALG.RSA
        assert area.parameters.rsaDetail.keyBits == 2048
        assert area.parameters.rsaDetail.scheme.scheme == TPM2_ALG.RSASSA
        assert area.parameters.rsaDetail.scheme.details.anySig.hashAlg == TPM2_ALG.SHA256


async def test_create_quote_key_refuses_other_algorithms(setup: Any, swtpm_tcti: str) -> None:
    with pytest.raises(ConfigError, match="'ecc' or 'rsa'"):
        await in_thread(setup.create_quote_key, swtpm_tcti, "dsa")


# ---- credential activation ----------------------------------------------------------------


def _name(public: bytes) -> bytes:
    """The TPM name of a TPM2B_PUBLIC (nameAlg SHA-256 || SHA-256 of TPMT_PUBLIC)."""
    area = public[2:]
    assert int.from_bytes(public[:2], "big") == len(area)
    return b"\x00\x0b" + hashlib.sha256(area).digest()


def _tpm_make_credential(
    setup: Any, tcti: str, ek_public: bytes, key_name: bytes, secret: bytes
) -> tuple[bytes, bytes]:
    """The TPM's own MakeCredential for an EK public area loaded with LoadExternal
    (what the quote service computes in Python): (credential blob, encrypted secret)."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC

    with setup._esapi(tcti) as ectx:
        handle = ectx.load_external(
            TPM2B_PUBLIC(publicArea=_public_area(ek_public)), None, ESYS_TR.NULL
        )
        try:
            blob, seed = ectx.make_credential(handle, secret, key_name)
        finally:
            ectx.flush_context(handle)
    return bytes(blob.credential), bytes(seed.secret)


def _other_p256_ek(ek_public: bytes) -> bytes:
    """The L-2 EK public area with another P-256 key: an EK of another TPM."""
    area = _public_area(ek_public)
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    area.unique.ecc.x = numbers.x.to_bytes(32, "big")
    area.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return bytes(area.marshal())


@pytest.mark.parametrize("index", [P256_EK_INDEX, RSA_EK_INDEX, P384_EK_INDEX])
async def test_activate_credential_round_trip(setup: Any, swtpm_tcti: str, index: int) -> None:
    private, public = await in_thread(setup.create_quote_key, swtpm_tcti, "ecc")
    _, ek_public = await in_thread(setup.read_ek, swtpm_tcti, index=index)
    secret = bytes(range(32))
    blob, encrypted = await in_thread(
        _tpm_make_credential, setup, swtpm_tcti, ek_public, _name(public), secret
    )
    got = await in_thread(
        setup.activate_credential, swtpm_tcti, private, public, blob, encrypted, ek_index=index
    )
    assert got == secret


async def test_activate_credential_refuses_a_blob_for_another_ek(
    setup: Any, swtpm_tcti: str
) -> None:
    """A blob the service made for another TPM's EK (same template, other key) does not
    open here: the seed decrypts to garbage and the integrity check fails."""
    private, public = await in_thread(setup.create_quote_key, swtpm_tcti, "ecc")
    _, ek_public = await in_thread(setup.read_ek, swtpm_tcti)
    blob, encrypted = await in_thread(
        _tpm_make_credential,
        setup,
        swtpm_tcti,
        _other_p256_ek(ek_public),
        _name(public),
        bytes(32),
    )
    with pytest.raises(HostError, match="ActivateCredential") as info:
        await in_thread(setup.activate_credential, swtpm_tcti, private, public, blob, encrypted)
    assert info.value.rc is not None


async def test_activate_credential_refuses_a_blob_for_the_other_ek_type(
    setup: Any, swtpm_tcti: str
) -> None:
    private, public = await in_thread(setup.create_quote_key, swtpm_tcti, "ecc")
    _, rsa_ek = await in_thread(setup.read_ek, swtpm_tcti, index=RSA_EK_INDEX)
    blob, encrypted = await in_thread(
        _tpm_make_credential, setup, swtpm_tcti, rsa_ek, _name(public), bytes(32)
    )
    with pytest.raises(HostError, match=r"rc 0x"):
        await in_thread(setup.activate_credential, swtpm_tcti, private, public, blob, encrypted)


async def test_activate_credential_refuses_a_blob_for_another_key(
    setup: Any, swtpm_tcti: str
) -> None:
    """A blob bound to another quote key's name does not open with this one."""
    private, public = await in_thread(setup.create_quote_key, swtpm_tcti, "ecc")
    _, other_public = await in_thread(setup.create_quote_key, swtpm_tcti, "ecc")
    _, ek_public = await in_thread(setup.read_ek, swtpm_tcti)
    blob, encrypted = await in_thread(
        _tpm_make_credential, setup, swtpm_tcti, ek_public, _name(other_public), bytes(32)
    )
    with pytest.raises(HostError, match="ActivateCredential"):
        await in_thread(setup.activate_credential, swtpm_tcti, private, public, blob, encrypted)


async def test_activate_credential_refuses_bad_blobs(setup: Any, swtpm_tcti: str) -> None:
    private, public = await in_thread(setup.create_quote_key, swtpm_tcti, "ecc")
    with pytest.raises(HostError, match=r"do not parse|trailing"):
        await in_thread(setup.activate_credential, swtpm_tcti, private, public + b"\0", b"x", b"y")
    with pytest.raises(HostError, match="larger than"):
        await in_thread(setup.activate_credential, swtpm_tcti, private, public, bytes(2000), b"y")


# ---- NV counters ------------------------------------------------------------------------


async def test_nv_counter_define_increment_read(setup: Any, swtpm_tcti: str) -> None:
    index = 0x01500010
    assert await in_thread(setup.define_nv_counter, swtpm_tcti, index) is True
    first = await in_thread(setup.read_nv_counter, swtpm_tcti, index)
    assert await in_thread(setup.increment_nv_counter, swtpm_tcti, index) == first + 1
    assert await in_thread(setup.read_nv_counter, swtpm_tcti, index) == first + 1
    # Defining again is a no-op that keeps the value.
    assert await in_thread(setup.define_nv_counter, swtpm_tcti, index) is False
    assert await in_thread(setup.read_nv_counter, swtpm_tcti, index) == first + 1


async def test_nv_counter_refuses_an_index_that_is_not_a_counter(
    setup: Any, swtpm_tcti: str
) -> None:
    """An index someone defined with other attributes is not taken over as a counter."""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

    index = 0x01500011

    def define_ordinary() -> None:
        with setup._esapi(swtpm_tcti) as ectx:
            ectx.nv_define_space(
                b"",
                TPM2B_NV_PUBLIC(
                    nvPublic=TPMS_NV_PUBLIC(
                        nvIndex=index,
                        nameAlg=TPM2_ALG.SHA256,
                        attributes=TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA,
                        dataSize=8,
                    )
                ),
                ESYS_TR.OWNER,
            )

    await in_thread(define_ordinary)
    with pytest.raises(HostError, match="not a taonet counter"):
        await in_thread(setup.define_nv_counter, swtpm_tcti, index)


@pytest.mark.parametrize("index", [0x00500000, 0x01C0000A, 0x02000000, 0x81000001])
async def test_nv_counter_index_range(setup: Any, swtpm_tcti: str, index: int) -> None:
    with pytest.raises(ConfigError, match="NV counter index"):
        await in_thread(setup.define_nv_counter, swtpm_tcti, index)


async def test_tss_errors_carry_the_rc(setup: Any, swtpm_tcti: str) -> None:
    with pytest.raises(HostError, match=r"rc 0x[0-9a-f]+") as info:
        await in_thread(setup.read_nv_counter, swtpm_tcti, 0x01500FFF)
    assert isinstance(info.value.rc, int)
    assert info.value.rc != 0


# ---- PCRs, flushing, connection errors ----------------------------------------------------


async def test_pcrs_read_extend_reset(setup: Any, swtpm_tcti: str) -> None:
    before = await in_thread(setup.read_pcrs, swtpm_tcti, range(24))
    assert sorted(before) == list(range(24))
    assert all(len(v) == 32 for v in before.values())
    try:
        new = await in_thread(setup.extend_pcr, swtpm_tcti, 23, b"event")
        expected = hashlib.sha256(before[23] + hashlib.sha256(b"event").digest()).digest()
        assert new == expected
        assert (await in_thread(setup.read_pcrs, swtpm_tcti, [23]))[23] == expected
    finally:
        await in_thread(setup.reset_pcr, swtpm_tcti, 23)
    assert (await in_thread(setup.read_pcrs, swtpm_tcti, [23]))[23] == bytes(32)


@pytest.mark.parametrize("pcrs", [[], [24], [-1], [0, 99]])
async def test_read_pcrs_refuses_bad_lists(setup: Any, swtpm_tcti: str, pcrs: list[int]) -> None:
    with pytest.raises(ConfigError, match="PCRs"):
        await in_thread(setup.read_pcrs, swtpm_tcti, pcrs)


async def test_flush_transient_frees_what_a_crashed_client_left(
    setup: Any, fresh_swtpm: Swtpm
) -> None:
    swtpm_tcti = fresh_swtpm.tcti
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMT_PUBLIC

    def leave_two_loaded() -> None:
        template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.unmarshal(setup.PRIMARY_TEMPLATE)[0])
        with setup._esapi(swtpm_tcti) as ectx:
            for _ in range(2):
                ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)

    await in_thread(leave_two_loaded)
    assert len(await in_thread(setup.loaded_handles, swtpm_tcti)) == 2
    assert await in_thread(setup.flush_transient, swtpm_tcti) == 2
    assert await in_thread(setup.loaded_handles, swtpm_tcti) == []


async def test_no_tpm_there_is_a_host_error(setup: Any, fresh_swtpm: Swtpm) -> None:
    await fresh_swtpm.astop()
    with pytest.raises(HostError):
        await in_thread(setup.read_pcrs, fresh_swtpm.tcti, [0])


# ---- the package without tpm2-pytss; TSS2_LOG -------------------------------------------

IMPORT_WITHOUT_TSS = """
import sys
sys.modules["tpm2_pytss"] = None  # as if not installed
try:
    import taonet.hosts.tpm2
except ImportError as exc:
    from taonet import ConfigError
    print(type(exc).__name__, isinstance(exc, ConfigError), exc)
"""
SHOW_TSS2_LOG = "import os, taonet.hosts.tpm2; print(os.environ['TSS2_LOG'])"


async def _python(code: str, **env: str) -> str:
    import os
    import sys

    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", code],
            env={**{k: v for k, v in os.environ.items() if k != "TSS2_LOG"}, **env},
            capture_stdout=True,
            capture_stderr=True,
        )
    return str(done.stdout.decode().strip())


async def test_import_without_tpm2_pytss_says_what_to_install() -> None:
    out = await _python(IMPORT_WITHOUT_TSS)
    assert out.startswith("Tpm2SupportMissing True TPM 2.0 support needs: apt-get install")
    assert "libtss2-dev pkg-config && pip install 'taonet[tpm2]'" in out


async def test_tss2_log_is_quiet_unless_the_user_chose(setup: Any) -> None:
    assert await _python(SHOW_TSS2_LOG) == "all+NONE"
    assert await _python(SHOW_TSS2_LOG, TSS2_LOG="esys+debug") == "esys+debug"
