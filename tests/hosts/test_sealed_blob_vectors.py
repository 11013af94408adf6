"""Golden soft-host blobs (tests/vectors/sealed_blob.json): a host with fixed keys.

Blobs sealed once must open forever for the programs they were sealed for (and for no
other), whether the host holds the keys in memory or loads them from its ``keys``
file; sealing again must give the same header; the data inside a rollback-protected
blob and the shared secrets must come out byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import HostError, auth
from taonet.crypto import Crypter, Keyset, Signer
from taonet.hosts import SoftHost
from taonet.wire import parse
from tests.conftest import PASSWORD
from tests.vectors.generate import fixed_keyset, generate_sealed_blob, read_json, seal_header

TIMEOUT = 10
FILE = read_json("sealed_blob.json")
BLOBS: list[dict[str, Any]] = FILE["blobs"]
ROLLBACK: dict[str, Any] = FILE["rollback"]
PROGRAM = auth.parse_prin(FILE["program"])
OTHER = auth.parse_prin(FILE["other_program"])


def vector_keyset() -> Keyset:
    keys = FILE["keyset"]
    return Keyset(
        signer=Signer.from_pkcs8_der(bytes.fromhex(keys["private_key_pkcs8_der"])),
        crypter=Crypter(bytes.fromhex(keys["crypter_key"])),
        deriving_key=bytes.fromhex(keys["deriving_key"]),
    )


def test_the_keyset_is_the_fixed_one_and_names_the_host() -> None:
    keyset, fixed = vector_keyset(), fixed_keyset("soft host")
    assert keyset.to_private_bytes() == fixed.to_private_bytes()
    host = SoftHost(keyset)
    assert str(host.name) == FILE["host_name"]
    assert PROGRAM.is_sub_principal_of(host.name)
    assert OTHER.is_sub_principal_of(host.name)


def hosts(tmp_path: Path) -> list[SoftHost]:
    """The vector host twice: keys in memory, and loaded from the stored keys file."""
    (tmp_path / "keys").write_bytes(bytes.fromhex(FILE["keyset"]["sealed_keys_file"]))
    (tmp_path / "keys").chmod(0o600)
    return [SoftHost(vector_keyset()), SoftHost.load(tmp_path, PASSWORD)]


@pytest.mark.parametrize("vector", BLOBS, ids=lambda v: str(v["policy"]))
def test_a_stored_blob_opens_for_its_programs_only(tmp_path: Path, vector: dict[str, Any]) -> None:
    blob, data = bytes.fromhex(vector["blob"]), bytes.fromhex(vector["data"])
    for host in hosts(tmp_path):
        assert str(host.name) == FILE["host_name"]
        for name in vector["opens_for"]:
            assert host.unseal_for(auth.parse_prin(name), blob) == (data, vector["policy"])
        for name in vector["refused_for"]:
            with pytest.raises(HostError, match="bound to another principal"):
                host.unseal_for(auth.parse_prin(name), blob)


@pytest.mark.parametrize("vector", BLOBS, ids=lambda v: str(v["policy"]))
def test_sealing_again_gives_the_same_header(vector: dict[str, Any]) -> None:
    host = SoftHost(vector_keyset())
    stored, data = bytes.fromhex(vector["blob"]), bytes.fromhex(vector["data"])
    header = bytes.fromhex(vector["header"])
    assert stored.startswith(header)
    assert seal_header(host, PROGRAM, vector["policy"]) == header
    again = host.seal_for(PROGRAM, data, vector["policy"])
    assert again[: len(header)] == header
    assert len(again) == len(stored)
    assert again != stored  # a fresh nonce


@pytest.mark.parametrize("vector", BLOBS, ids=lambda v: str(v["policy"]))
def test_every_flipped_byte_of_a_stored_blob_is_refused(vector: dict[str, Any]) -> None:
    host = SoftHost(vector_keyset())
    blob = bytes.fromhex(vector["blob"])
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(HostError):
            host.unseal_for(PROGRAM, bytes(tampered))


async def test_the_stored_rollback_protected_blob(tmp_path: Path) -> None:
    blob, inner = bytes.fromhex(ROLLBACK["blob"]), bytes.fromhex(ROLLBACK["sealed_data"])
    label, data = ROLLBACK["label"], bytes.fromhex(ROLLBACK["data"])
    assert auth.parse_prin(ROLLBACK["program"]) == PROGRAM
    entry = parse("RollbackSealedData", inner).entry
    assert (entry.hosted_program_name, entry.entry_label, entry.counter) == (
        str(PROGRAM),
        label,
        ROLLBACK["counter"],
    )
    with trio.fail_after(TIMEOUT):
        for host in hosts(tmp_path):
            assert host.unseal_for(PROGRAM, blob) == (inner, "self")
            tao = host.tao_for(PROGRAM)
            with pytest.raises(HostError, match="behind this blob"):
                await tao.rollback_protected_unseal(blob)  # a host that lost its counter
            await tao.init_counter(label, ROLLBACK["counter"])
            assert await tao.rollback_protected_unseal(blob) == (data, "self")
            with pytest.raises(HostError):
                await host.tao_for(OTHER).rollback_protected_unseal(blob)
            await tao.init_counter(label, ROLLBACK["counter"] + 1)
            with pytest.raises(HostError, match="rollback detected"):
                await tao.rollback_protected_unseal(blob)

        # A fresh host seals the same data inside at the same counter.
        host = SoftHost(vector_keyset())
        again = await host.tao_for(PROGRAM).rollback_protected_seal(label, data)
    assert host.unseal_for(PROGRAM, again) == (inner, "self")


def test_the_shared_secrets_come_out_exactly(tmp_path: Path) -> None:
    for host in hosts(tmp_path):
        for vector in FILE["shared_secrets"]:
            secret = host.shared_secret_for(
                auth.parse_prin(vector["program"]), vector["size"], vector["policy"]
            )
            assert secret.hex() == vector["secret"]


async def test_the_generator_makes_the_deterministic_parts_again() -> None:
    """All but the AES-GCM blobs and the keys file's salt and nonce come out the same."""
    with trio.fail_after(TIMEOUT):
        made = await generate_sealed_blob()
    for content in (made, FILE):
        del content["keyset"]["sealed_keys_file"]
        del content["rollback"]["blob"]
        for blob in content["blobs"]:
            del blob["blob"]
    assert made == FILE
