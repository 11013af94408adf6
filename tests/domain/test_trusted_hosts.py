"""Trusted TPM host states: the rules, the guard's answer, and the refusal's message.

A domain trusts a TPM host state with ``Authorized(ext.PCRs(...), "Host")`` (any
certified TPM) or ``Authorized(tpm2([h]).PCRs(...), "Host")`` (one TPM). Every attack
is a host name that is right but for one thing: one PCR value, one PCR more or less,
another TPM for a pinned state.
"""

from __future__ import annotations

import hashlib

import pytest

from taonet import AuthorizationError, ConfigError, auth
from taonet.attestation.tpm2 import host_name, pcrs_ext
from taonet.domain import (
    ACLGuard,
    ConservativeGuard,
    LiberalGuard,
    check_host_state,
    host_state_rule,
    trusted_host_states,
)

GOOD = {n: hashlib.sha256(bytes([n])).digest() for n in (0, 1, 2, 3, 4, 7)}
QUOTE_KEY = b"quote key one"
OTHER_KEY = b"quote key two"


def program_of(host: auth.Prin) -> auth.Prin:
    return host.extend(auth.PrinExt("Program", (auth.Bytes(b"\x42" * 32),)))


def guard_trusting(*states: dict[int, bytes]) -> ACLGuard:
    guard = ACLGuard()
    for pcrs in states:
        guard = guard.with_rule(host_state_rule(str(pcrs_ext(pcrs))))
    return guard


def test_spec_forms_give_one_rule() -> None:
    name = host_name(QUOTE_KEY, GOOD)
    ext = str(pcrs_ext(GOOD))
    rule = host_state_rule(str(name))
    assert rule == host_state_rule(ext) == host_state_rule("ext." + ext)
    assert rule == host_state_rule(f"  {ext}\n")
    assert str(rule) == f'Authorized(ext.{ext}, "Host")'
    ACLGuard.check_rule(rule)
    (state,) = trusted_host_states(ACLGuard([rule]))
    assert state.pcrs == GOOD
    assert state.tpm is None


@pytest.mark.parametrize(
    "spec",
    [
        "",
        'key([00]).PCRs("0", "00")',
        "Program([42])",
        'PCRs("0,1", "00")',
        'PCRs("0", "zz")',
        "tpm2([" + "00" * 32 + "])",
        'PCRs("0")',
        "x" * 10_000,
    ],
)
def test_other_specs_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError):
        host_state_rule(spec)


def test_a_trusted_state_is_accepted_on_any_tpm() -> None:
    guard = guard_trusting(GOOD)
    for key in (QUOTE_KEY, OTHER_KEY):
        check_host_state(guard, program_of(host_name(key, GOOD)), root_signer_type="tpm2")
        check_host_state(guard, host_name(key, GOOD), root_signer_type="tpm2")


@pytest.mark.parametrize("pcr", sorted(GOOD))
def test_one_pcr_changed_is_refused_and_named(pcr: int) -> None:
    bad = dict(GOOD)
    bad[pcr] = hashlib.sha256(b"another boot loader").digest()
    with pytest.raises(AuthorizationError) as info:
        check_host_state(guard_trusting(GOOD), program_of(host_name(QUOTE_KEY, bad)))
    message = str(info.value)
    assert f"PCR {pcr} is {bad[pcr].hex()[:16]}... (trusted {GOOD[pcr].hex()[:16]}...)" in message
    assert message.count("PCR ") == 1  # only the one that differs


def test_another_selection_is_another_state() -> None:
    more = {**GOOD, 16: b"\x00" * 32}
    fewer = {k: v for k, v in GOOD.items() if k != 7}
    guard = guard_trusting(GOOD)
    with pytest.raises(AuthorizationError, match="PCR 16 is reported but not in the trusted"):
        check_host_state(guard, host_name(QUOTE_KEY, more))
    with pytest.raises(AuthorizationError, match="PCR 7 is trusted but not reported"):
        check_host_state(guard, host_name(QUOTE_KEY, fewer))


def test_the_refusal_names_the_closest_state() -> None:
    far = {n: b"\x01" * 32 for n in GOOD}
    near = dict(GOOD)
    near[4] = b"\x02" * 32
    guard = guard_trusting(far, GOOD)
    with pytest.raises(AuthorizationError) as info:
        check_host_state(guard, host_name(QUOTE_KEY, near))
    assert "PCR 4 is" in str(info.value)
    assert "PCR 0" not in str(info.value)


def test_a_state_pinned_to_one_tpm() -> None:
    pinned = auth.Pred("Authorized", (host_name(QUOTE_KEY, GOOD), auth.Str("Host")))
    ACLGuard.check_rule(pinned)
    guard = ACLGuard([pinned])
    (state,) = trusted_host_states(guard)
    assert state.tpm == host_name(QUOTE_KEY, GOOD).root()
    check_host_state(guard, host_name(QUOTE_KEY, GOOD))
    with pytest.raises(AuthorizationError, match="pinned to another TPM"):
        check_host_state(guard, host_name(OTHER_KEY, GOOD))


def test_no_trusted_state_refuses_every_tpm_host() -> None:
    for guard in (ACLGuard(), ConservativeGuard()):
        with pytest.raises(AuthorizationError, match="trusts no TPM host state"):
            check_host_state(guard, host_name(QUOTE_KEY, GOOD))
    check_host_state(LiberalGuard(), host_name(QUOTE_KEY, GOOD))


def test_other_roots_are_not_host_states() -> None:
    key_name = auth.Prin("key", auth.Bytes(b"\x01" * 32)).extend(pcrs_ext(GOOD))
    check_host_state(ACLGuard(), key_name)  # a soft root: its certificate is the check
    with pytest.raises(AuthorizationError, match="not for a tpm2"):
        check_host_state(guard_trusting(GOOD), key_name, root_signer_type="tpm2")
    no_pcrs = auth.Prin("tpm2", auth.Bytes(b"\x01" * 32))
    with pytest.raises(AuthorizationError, match="reports no PCRs"):
        check_host_state(guard_trusting(GOOD), no_pcrs)


def test_program_rules_follow_the_pcrs_of_a_tpm_host() -> None:
    rule = auth.Pred(
        "Authorized",
        (
            auth.PrinTail(auth.SubPrin((auth.PrinExt("Program", (auth.Bytes(b"\x42" * 32),)),))),
            auth.Str("Execute"),
        ),
    )
    guard = ACLGuard([rule])
    assert guard.is_authorized(program_of(host_name(QUOTE_KEY, GOOD)), "Execute")
    other = host_name(QUOTE_KEY, GOOD).extend(auth.PrinExt("Program", (auth.Bytes(b"\x43" * 32),)))
    assert not guard.is_authorized(other, "Execute")
    # The skip is for tpm2 hosts only: a key principal's first extension is matched.
    key_host = auth.Prin("key", auth.Bytes(b"\x01" * 32)).extend(pcrs_ext(GOOD))
    assert not guard.is_authorized(program_of(key_host), "Execute")
    # A "Host" rule is not an "Execute" rule, and the reverse.
    assert not guard_trusting(GOOD).is_authorized(program_of(host_name(QUOTE_KEY, GOOD)), "Execute")
    assert not guard.is_authorized(host_name(QUOTE_KEY, GOOD), "Host")
