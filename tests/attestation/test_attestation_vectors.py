"""Golden attestations (tests/vectors/attestation.json): accepted, and made again exactly.

The signatures in the file are randomized ECDSA: they must still validate. All the
rest (statements, keys, delegations, the envelope) taonet must still make byte for
byte from the same inputs.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import pytest

from taonet import AuthenticationError, auth
from taonet.attestation import UNROOTED, Attestation, validate
from taonet.crypto import Crypter, Keyset, Signer
from taonet.hosts import SoftHost
from tests.vectors.generate import (
    ATTESTATION_KEYS,
    attestation_recipes,
    fixed_signer,
    generate_attestation,
    make_attestation,
    proven_json,
    read_json,
)

FILE = read_json("attestation.json")
VECTORS: list[dict[str, Any]] = FILE["vectors"]
KEYS = {
    name: Signer.from_pkcs8_der(bytes.fromhex(key["private_key_pkcs8_der"]))
    for name, key in FILE["keys"].items()
}
RECIPES = {recipe["name"]: recipe for recipe in attestation_recipes(KEYS)}
STORED = {v["name"]: Attestation.from_bytes(bytes.fromhex(v["attestation"])) for v in VECTORS}


def vector_ids(vector: dict[str, Any]) -> str:
    return str(vector["name"])


def test_the_keys_are_the_fixed_keys() -> None:
    assert sorted(FILE["keys"]) == sorted(ATTESTATION_KEYS)
    for name, key in FILE["keys"].items():
        signer = KEYS[name]
        assert signer.public_key_der().hex() == key["public_key_der"]
        assert str(auth.key_principal(signer.public_key_der())) == key["principal"]
        assert signer.to_pkcs8_der() == fixed_signer(name).to_pkcs8_der()


@pytest.mark.parametrize("vector", VECTORS, ids=vector_ids)
def test_a_vector_is_one_canonical_attestation(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["attestation"])
    att = Attestation.from_bytes(data)
    assert att.to_bytes() == data
    assert att.serialized_statement.hex() == vector["serialized_statement"]
    assert str(att.statement()) == vector["statement"]
    assert auth.encode(auth.parse_form(vector["statement"])) == att.serialized_statement
    assert att.signer_key == KEYS[vector["signer"]].public_key_der()
    delegation = vector["delegation"]
    expected = STORED[delegation].to_bytes() if delegation is not None else None
    assert att.serialized_delegation == expected


@pytest.mark.parametrize("vector", VECTORS, ids=vector_ids)
def test_a_vector_validates_to_what_the_file_says(vector: dict[str, Any]) -> None:
    proven = validate(
        bytes.fromhex(vector["attestation"]), now_ns=vector["now_ns"], policy_cert=UNROOTED
    )
    assert proven_json(proven) == vector["proven"]


@pytest.mark.parametrize("vector", VECTORS, ids=vector_ids)
def test_a_vector_is_refused_outside_its_window(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["attestation"])
    window = vector["proven"]
    with pytest.raises(AuthenticationError, match="expired"):
        validate(data, now_ns=window["not_after"], policy_cert=UNROOTED)
    with pytest.raises(AuthenticationError, match="not yet valid"):
        validate(data, now_ns=window["not_before"] - 1, policy_cert=UNROOTED)


@pytest.mark.parametrize("vector", VECTORS, ids=vector_ids)
def test_every_flipped_byte_of_a_vector_is_refused(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["attestation"])
    accepted = []
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        try:
            validate(bytes(tampered), now_ns=vector["now_ns"], policy_cert=UNROOTED)
        except AuthenticationError:
            continue
        accepted.append(i)
    assert accepted == []


@pytest.mark.parametrize("vector", VECTORS, ids=vector_ids)
def test_taonet_makes_the_vector_again_but_for_its_signature(vector: dict[str, Any]) -> None:
    made = make_attestation(RECIPES[vector["name"]], KEYS, STORED)
    stored = STORED[vector["name"]]
    assert made.signature != stored.signature  # ECDSA here is randomized
    assert attrs.evolve(made, signature=stored.signature).to_bytes().hex() == vector["attestation"]
    assert (
        proven_json(validate(made, now_ns=vector["now_ns"], policy_cert=UNROOTED))
        == (vector["proven"])
    )


def soft_core(signer: Signer, **options: Any) -> SoftHost:
    return SoftHost(
        Keyset(signer=signer, crypter=Crypter.generate(), deriving_key=os.urandom(32)), **options
    )


def test_a_soft_host_with_the_key_makes_the_same_statements() -> None:
    program, stacked = RECIPES["program"], RECIPES["stacked program"]
    host = soft_core(KEYS["host"])
    att = host.attest_for(
        program["speaker"],
        program["message"],
        time=program["time"],
        expiration=program["expiration"],
    )
    assert att.serialized_statement == STORED["program"].serialized_statement
    assert attrs.evolve(att, signature=STORED["program"].signature) == STORED["program"]

    # A stacked host's core: the delegation its parent gave rides in what it signs.
    given = RECIPES["delegation"]["speaker"]
    core = soft_core(KEYS["stacked"], name=given, delegation=STORED["delegation"])
    att = core.attest_for(
        stacked["speaker"],
        stacked["message"],
        time=stacked["time"],
        expiration=stacked["expiration"],
    )
    stored = STORED["stacked program"]
    assert attrs.evolve(att, signature=stored.signature) == stored


def test_the_generator_makes_all_but_the_signatures_again() -> None:
    made = generate_attestation()
    for content in (made, FILE):
        for vector in content["vectors"]:
            del vector["attestation"]
    assert made == FILE
