"""Guards: decisions, and signed ACL rule sets that refuse tampering."""

from __future__ import annotations

import pytest

from taonet import AuthenticationError, AuthorizationError, ConfigError, auth
from taonet.crypto import Signer
from taonet.domain import ACLGuard, ConservativeGuard, LiberalGuard, authorized
from taonet.wire import message_class, parse, serialize

HOST = auth.key_principal(Signer.generate().public_key_der())
OTHER_HOST = auth.key_principal(Signer.generate().public_key_der())


def prog(h: int) -> auth.SubPrin:
    return auth.SubPrin((auth.PrinExt("Program", (auth.Bytes(bytes([h]) * 32),)),))


POLICY = auth.SubPrin((auth.PrinExt("PolicyKey", (auth.Bytes(b"\x07" * 32),)),))
TAIL_RULE = auth.Pred("Authorized", (auth.PrinTail(prog(1)), auth.Str("Execute")))


def test_trivial_guards() -> None:
    assert LiberalGuard().is_authorized(HOST, "Execute")
    assert not ConservativeGuard().is_authorized(HOST, "Execute")
    with pytest.raises(AuthorizationError, match="Conservative guard does not authorize"):
        ConservativeGuard().check(HOST, "Execute")
    assert str(LiberalGuard().subprincipal()) == '.TrivialGuard("Liberal")'


def test_exact_rules() -> None:
    p = HOST.extend(prog(1))
    guard = ACLGuard([authorized(p, "Execute")])
    assert guard.is_authorized(p, "Execute")
    assert not guard.is_authorized(p, "Read")
    assert not guard.is_authorized(HOST.extend(prog(2)), "Execute")
    assert not guard.is_authorized(OTHER_HOST.extend(prog(1)), "Execute")
    # Exact rules are exact: a sub-principal is not covered.
    assert not guard.is_authorized(p.extend(POLICY), "Execute")
    guard.check(p, "Execute")
    with pytest.raises(AuthorizationError):
        guard.check(p, "Read")


def test_rules_with_arguments() -> None:
    p = HOST.extend(prog(1))
    guard = ACLGuard([authorized(p, "Read", [auth.Str("/secret")])])
    assert guard.is_authorized(p, "Read", [auth.Str("/secret")])
    assert not guard.is_authorized(p, "Read", [auth.Str("/other")])
    assert not guard.is_authorized(p, "Read")


def test_tail_rules_match_programs_anchored_at_the_root() -> None:
    guard = ACLGuard([TAIL_RULE])
    assert guard.is_authorized(HOST.extend(prog(1)), "Execute")
    assert guard.is_authorized(OTHER_HOST.extend(prog(1)), "Execute")
    # The program's own extensions (binding to a domain) are still the program.
    assert guard.is_authorized(HOST.extend(prog(1)).extend(POLICY), "Execute")
    assert not guard.is_authorized(HOST.extend(prog(1)), "Read")
    assert not guard.is_authorized(HOST, "Execute")
    assert not guard.is_authorized(HOST.extend(prog(2)), "Execute")


def test_a_program_cannot_extend_itself_into_another() -> None:
    # Program 2 extends its own name with Program([1...]): still program 2.
    guard = ACLGuard([TAIL_RULE])
    impostor = HOST.extend(prog(2)).extend(prog(1))
    assert not guard.is_authorized(impostor, "Execute")


def test_with_and_without_rules() -> None:
    guard = ACLGuard().with_rule(TAIL_RULE).with_rule(TAIL_RULE)
    assert guard.rules == (TAIL_RULE,)
    assert guard.without_rule(TAIL_RULE).rules == ()
    with pytest.raises(ConfigError, match="no rule"):
        ACLGuard().without_rule(TAIL_RULE)


def test_signed_rules_round_trip() -> None:
    policy = Signer.generate()
    guard = ACLGuard([TAIL_RULE, authorized(HOST, "Admin")])
    loaded = ACLGuard.from_signed(guard.to_signed(policy), policy.verifier())
    assert loaded == guard
    assert loaded.subprincipal() == guard.subprincipal()
    assert loaded.subprincipal().exts[0].name == "ACLGuard"


def test_rules_signed_by_another_key_are_refused() -> None:
    policy, mallory = Signer.generate(), Signer.generate()
    signed = ACLGuard([authorized(HOST, "Admin")]).to_signed(mallory)
    with pytest.raises(AuthenticationError, match="not signed by this domain's policy key"):
        ACLGuard.from_signed(signed, policy.verifier())


def test_edited_rules_are_refused() -> None:
    policy = Signer.generate()
    signed = parse("SignedACLSet", ACLGuard([TAIL_RULE]).to_signed(policy))
    aclset = message_class("ACLSet")()
    aclset.entries.extend([str(TAIL_RULE), str(authorized(HOST, "Admin"))])
    signed.serialized_aclset = serialize(aclset)
    with pytest.raises(AuthenticationError):
        ACLGuard.from_signed(serialize(signed), policy.verifier())


def test_every_flipped_byte_is_refused() -> None:
    policy = Signer.generate()
    signed = ACLGuard([TAIL_RULE]).to_signed(policy)
    for i in range(len(signed)):
        tampered = bytearray(signed)
        tampered[i] ^= 0x01
        with pytest.raises((AuthenticationError, ConfigError)):
            ACLGuard.from_signed(bytes(tampered), policy.verifier())


def test_garbage_is_refused() -> None:
    with pytest.raises(AuthenticationError):
        ACLGuard.from_signed(b"\x00garbage", Signer.generate().verifier())
