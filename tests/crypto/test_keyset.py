"""Password-sealed keysets: round trips, and every way a blob must refuse to open."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from taonet import ConfigError
from taonet.crypto import (
    ATTESTATION_CONTEXT,
    MAX_KEYSET_BYTES,
    Crypter,
    KdfParams,
    Keyset,
    Signer,
    _keyset,
    load_keyset,
    open_keyset,
    save_keyset,
    seal_keyset,
)

PASSWORD = b"correct horse battery staple"
FAST = KdfParams.for_tests()
KEYSET = Keyset.generate()
BLOB = seal_keyset(KEYSET, PASSWORD, kdf=FAST)
HEADER = 37


@pytest.mark.parametrize(
    "keyset",
    [
        Keyset.generate(),
        Keyset.generate(curve="P-384"),
        Keyset.generate(crypter=False),
        Keyset.generate(deriving=False),
        Keyset.generate(crypter=False, deriving=False),
        Keyset(signer=Signer.generate()),
    ],
    ids=["all", "p384", "no-crypter", "no-deriving", "signer-only", "direct"],
)
def test_round_trip(keyset: Keyset) -> None:
    opened = open_keyset(seal_keyset(keyset, PASSWORD, kdf=FAST), PASSWORD)
    assert opened == keyset
    assert opened.signer.public_key_der() == keyset.signer.public_key_der()
    assert (opened.crypter is None) == (keyset.crypter is None)
    assert opened.deriving_key == keyset.deriving_key
    # The keys work.
    sig = opened.signer.sign(b"x", ATTESTATION_CONTEXT)
    keyset.signer.verifier().verify(b"x", ATTESTATION_CONTEXT, sig)
    if keyset.crypter is not None:
        assert opened.crypter is not None
        assert keyset.crypter.decrypt(opened.crypter.encrypt(b"m")) == b"m"


def test_generate_fills_what_was_asked() -> None:
    ks = Keyset.generate(curve="P-384")
    assert ks.signer.key_type == "ecdsap384"
    assert isinstance(ks.crypter, Crypter)
    assert ks.deriving_key is not None
    assert len(ks.deriving_key) == 32
    assert Keyset.generate(crypter=False, deriving=False).crypter is None


def test_keyset_validation() -> None:
    with pytest.raises(TypeError):
        Keyset(signer="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Keyset(signer=KEYSET.signer, crypter=b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        Keyset(signer=KEYSET.signer, deriving_key=b"short")


def test_repr_hides_secrets() -> None:
    assert KEYSET.deriving_key is not None
    assert KEYSET.crypter is not None
    text = repr(KEYSET)
    assert KEYSET.deriving_key.hex()[:12] not in text
    assert KEYSET.crypter.key_bytes.hex()[:12] not in text
    assert "deriving_key" not in text


def test_seals_differ_each_time() -> None:
    assert seal_keyset(KEYSET, PASSWORD, kdf=FAST) != BLOB


def test_wrong_password() -> None:
    for pw in [b"wrong", PASSWORD + b" ", b"", PASSWORD.upper()]:
        with pytest.raises(ConfigError, match="wrong password or corrupted keyset"):
            open_keyset(BLOB, pw)


def test_empty_password_is_refused_when_sealing() -> None:
    with pytest.raises(ConfigError, match="empty password"):
        seal_keyset(KEYSET, b"", kdf=FAST)


def test_flipped_byte_anywhere_is_refused() -> None:
    # Every position, two masks each: the scrypt cost at FAST parameters is tiny.
    for i in range(len(BLOB)):
        for mask in (0x01, 0x80):
            altered = bytearray(BLOB)
            altered[i] ^= mask
            with pytest.raises(ConfigError):
                open_keyset(bytes(altered), PASSWORD)


def test_flipped_ciphertext_byte_says_wrong_password_or_corrupted() -> None:
    for i in range(HEADER, len(BLOB), 7):
        altered = bytearray(BLOB)
        altered[i] ^= 0x10
        with pytest.raises(ConfigError, match="wrong password or corrupted keyset"):
            open_keyset(bytes(altered), PASSWORD)


def test_truncated_or_extended_is_refused() -> None:
    for n in range(len(BLOB)):
        with pytest.raises(ConfigError):
            open_keyset(BLOB[:n], PASSWORD)
    with pytest.raises(ConfigError):
        open_keyset(BLOB + b"\x00", PASSWORD)
    with pytest.raises(ConfigError, match="truncated"):
        open_keyset(b"", PASSWORD)


def test_not_a_keyset() -> None:
    with pytest.raises(ConfigError, match="not a taonet keyset"):
        open_keyset(b"-----BEGIN PRIVATE KEY-----" + b"\x00" * 100, PASSWORD)
    with pytest.raises(ConfigError, match="version"):
        open_keyset(BLOB[:8] + b"\x02" + BLOB[9:], PASSWORD)
    with pytest.raises(ConfigError, match="over the"):
        open_keyset(b"\x00" * (MAX_KEYSET_BYTES + 1), PASSWORD)
    with pytest.raises(ConfigError):
        open_keyset("text", PASSWORD)  # type: ignore[arg-type]


def _with_params(n: int, r: int, p: int) -> bytes:
    return BLOB[:9] + struct.pack(">III", n, r, p) + BLOB[21:]


@pytest.mark.parametrize(
    ("n", "r", "p"),
    [
        (1 << 20, 8, 1),  # 1 GiB and seconds: accepted before the fix
        (1 << 20, 8, 2),  # 1 GiB, twice the work: accepted before the fix
        (1 << 18, 8, 1),  # just above what taonet writes
        (1 << 17, 16, 1),  # default n, more memory
        (1 << 17, 8, 2),  # default n, more work
        (1 << 14, 4, 1),  # cheaper, but not a set taonet writes
        (1 << 21, 8, 1),
        (1 << 31, 8, 1),
        (0xFFFFFFFF, 8, 1),
        (1000, 8, 1),  # not a power of two
        (0, 8, 1),
        (1, 8, 1),
        (1 << 3, 8, 1),  # below the floor
        (1 << 14, 0, 1),
        (1 << 14, 1 << 20, 1),
        (1 << 14, 8, 0),
        (1 << 14, 8, 1 << 30),
        (1 << 20, 16, 1),  # 2 GiB
        (1 << 20, 8, 16),
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
    ],
)
def test_absurd_kdf_params_refused_before_scrypt(
    monkeypatch: pytest.MonkeyPatch, n: int, r: int, p: int
) -> None:
    def no_scrypt(*args: object) -> bytes:
        raise AssertionError("scrypt must not run for out-of-bounds parameters")

    monkeypatch.setattr(_keyset, "_scrypt", no_scrypt)
    with pytest.raises(ConfigError, match="scrypt parameters out of bounds"):
        open_keyset(_with_params(n, r, p), PASSWORD)


def test_in_bounds_changed_params_fail_authentication() -> None:
    with pytest.raises(ConfigError, match="wrong password or corrupted keyset"):
        open_keyset(_with_params(1 << 5, 8, 1), PASSWORD)


# The attack of the review, as an attacker (or a disk error) does it: edit the
# header of a keyset file so that scrypt would need 1 GiB and seconds, then have
# the owner open it. Run in a fresh interpreter so its peak RSS is its own.
_OPEN_EDITED = """
import resource, sys
from taonet import ConfigError
from taonet.crypto import load_keyset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_keyset(sys.argv[1], sys.argv[2].encode())
except ConfigError as exc:
    print(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024)  # MiB (Linux counts ru_maxrss in KiB)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_hand_edited_header_is_refused_before_scrypt_allocates(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    save_keyset(path, KEYSET, PASSWORD, kdf=FAST)
    with path.open("r+b") as f:
        f.seek(9)
        f.write(struct.pack(">III", 1 << 20, 8, 1))
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_EDITED, str(path), PASSWORD.decode()],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    message, grown_mib = done.stdout.splitlines()
    assert "scrypt parameters out of bounds: n=1048576 must be a power of two" in message
    assert message.startswith(f"{path}: corrupted keyset")
    # Before the fix scrypt ran first: +1024 MiB, then "wrong password".
    assert int(grown_mib) < 64, done.stdout


def test_kdf_params_validation() -> None:
    for n, r, p in [
        (1 << 21, 8, 1),
        (1 << 18, 8, 1),
        (3000, 8, 1),
        (1 << 14, 0, 1),
        (1 << 14, 16, 1),
        (1 << 14, 8, 2),
        (1 << 14, 8, 17),
    ]:
        with pytest.raises(ConfigError, match="out of bounds"):
            KdfParams(n=n, r=r, p=p)
    with pytest.raises(TypeError):
        KdfParams(n=1.5, r=8, p=1)  # type: ignore[arg-type]


def test_every_set_taonet_writes_opens() -> None:
    # The bounds refuse nothing taonet itself writes.
    # (2**13 to 2**17 cost up to 128 MiB each; test_default_kdf_is_strong_and_works
    # opens the largest.)
    for log2_n in range(4, 13):
        kdf = KdfParams(n=1 << log2_n, r=8, p=1)
        assert open_keyset(seal_keyset(KEYSET, PASSWORD, kdf=kdf), PASSWORD) == KEYSET
    assert KdfParams.default() == KdfParams(n=1 << 17, r=8, p=1)


def test_default_kdf_is_strong_and_works() -> None:
    default = KdfParams.default()
    assert default.n >= 1 << 15
    assert default.r >= 8
    assert default.p >= 1
    blob = seal_keyset(KEYSET, PASSWORD)  # default parameters
    n, r, p = struct.unpack_from(">III", blob, 9)
    assert (n, r, p) == (default.n, default.r, default.p)
    assert open_keyset(blob, PASSWORD) == KEYSET


def test_for_tests_params_are_cheap() -> None:
    assert KdfParams.for_tests().n == 1 << 4


# -- files --------------------------------------------------------------------


def test_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    old = os.umask(0)
    try:
        save_keyset(path, KEYSET, PASSWORD, kdf=FAST)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyset(path, PASSWORD) == KEYSET
    assert load_keyset(str(path), PASSWORD) == KEYSET
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]


def test_save_replaces(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    save_keyset(path, KEYSET, PASSWORD, kdf=FAST)
    other = Keyset.generate()
    save_keyset(path, other, PASSWORD, kdf=FAST)
    assert load_keyset(path, PASSWORD) == other


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no keyset at"):
        load_keyset(tmp_path / "absent", PASSWORD)


def test_load_wrong_password_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    save_keyset(path, KEYSET, PASSWORD, kdf=FAST)
    with pytest.raises(ConfigError, match=r"keys: wrong password or corrupted keyset"):
        load_keyset(path, b"nope")


def test_load_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"\x00" * (MAX_KEYSET_BYTES + 1))
    with pytest.raises(ConfigError, match="limit"):
        load_keyset(path, PASSWORD)


def test_private_bytes_round_trip_and_malformed() -> None:
    from taonet import ConfigError
    from taonet.crypto import Keyset

    keyset = Keyset.generate()
    again = Keyset.from_private_bytes(keyset.to_private_bytes())
    assert again.signer.public_key_der() == keyset.signer.public_key_der()
    assert again.crypter is not None
    assert keyset.crypter is not None
    assert again.crypter.key_bytes == keyset.crypter.key_bytes
    assert again.deriving_key == keyset.deriving_key
    data = keyset.to_private_bytes()
    for bad in (b"", data[:-1], data + b"\x00", b"\xff" * 40):
        with pytest.raises(ConfigError):
            Keyset.from_private_bytes(bad)
