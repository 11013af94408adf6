"""Trusted TPM host states: the rules, the guard's answer, and the refusal's message.

A domain trusts a TPM host state with ``Authorized(tpm2([h]).PCRs(...), "Host")`` (one
TPM: what ``--add-host`` writes for the name ``taonet host show`` prints) or
``Authorized(ext.PCRs(...), "Host")`` (every certified TPM: the bare ``PCRs(...)``).
Every attack is a host name that is right but for one thing: one PCR value, one PCR
more or less, another TPM (another user's quote key) for a pinned state.
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
    any_tpm_host_rule,
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
    ext = str(pcrs_ext(GOOD))
    rule = host_state_rule(ext)
    assert rule == host_state_rule("ext." + ext)
    assert rule == host_state_rule(f"  {ext}\n")
    assert str(rule) == f'Authorized(ext.{ext}, "Host")'
    ACLGuard.check_rule(rule)
    (state,) = trusted_host_states(ACLGuard([rule]))
    assert state.pcrs == GOOD
    assert state.tpm is None


def test_a_full_name_pins_the_state_to_its_tpm() -> None:
    name = host_name(QUOTE_KEY, GOOD)
    rule = host_state_rule(f" {name}\n")
    assert str(rule) == f'Authorized({name}, "Host")'
    ACLGuard.check_rule(rule)
    (state,) = trusted_host_states(ACLGuard([rule]))
    assert state.pcrs == GOOD
    assert state.tpm == name.root()
    assert any_tpm_host_rule(rule) == host_state_rule(str(pcrs_ext(GOOD)))
    assert any_tpm_host_rule(any_tpm_host_rule(rule)) == any_tpm_host_rule(rule)


def test_another_users_quote_key_is_refused_under_a_pinned_state() -> None:
    """The attack: a second user of the same TPM certifies a quote key of its own and
    signs as tpm2([its key]).PCRs(S).Program([h]), the trusted S. Under the rule
    --add-host writes for the operator's host, only that host's quote key passes."""
    guard = ACLGuard([host_state_rule(str(host_name(QUOTE_KEY, GOOD)))])
    check_host_state(guard, program_of(host_name(QUOTE_KEY, GOOD)), root_signer_type="tpm2")
    with pytest.raises(AuthorizationError) as info:
        check_host_state(guard, program_of(host_name(OTHER_KEY, GOOD)), root_signer_type="tpm2")
    assert "trusts no TPM host state on this TPM" in str(info.value)


def test_a_refusal_names_no_other_tpm() -> None:
    """A requester on TPM B learns nothing of the states pinned to TPM A: neither A's
    quote key hash nor a prefix of A's PCR values, whatever B reports."""
    a, b = host_name(QUOTE_KEY, GOOD), host_name(OTHER_KEY, GOOD)
    a_hash = a.root().key_hash
    assert isinstance(a_hash, auth.Bytes)
    guard = ACLGuard([host_state_rule(str(a))])
    near = dict(GOOD)
    near[0] = b"\x99" * 32
    for pcrs in (GOOD, near):
        with pytest.raises(AuthorizationError) as info:
            check_host_state(guard, host_name(OTHER_KEY, pcrs), root_signer_type="tpm2")
        message = str(info.value)
        assert a_hash.value.hex()[:8] not in message
        assert all(v.hex()[:8] not in message for k, v in GOOD.items() if pcrs[k] != v)
        assert "PCR " not in message
    # A state trusted on any TPM is still compared, and B's own pinned states.
    guard = guard.with_rule(host_state_rule(str(pcrs_ext(GOOD))))
    with pytest.raises(AuthorizationError, match="PCR 0 is 9999") as info:
        check_host_state(guard, host_name(OTHER_KEY, near), root_signer_type="tpm2")
    assert a_hash.value.hex()[:8] not in str(info.value)
    check_host_state(guard, b, root_signer_type="tpm2")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        'key([00]).PCRs("0", "00")',
        f"{host_name(QUOTE_KEY, GOOD)}.Program([42])",
        str(host_name(QUOTE_KEY, GOOD)).replace("tpm2([", "tpm2([00"),
        f"ext.{pcrs_ext(GOOD)}.Program([42])",
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
    assert pinned == host_state_rule(str(host_name(QUOTE_KEY, GOOD)))
    ACLGuard.check_rule(pinned)
    guard = ACLGuard([pinned])
    (state,) = trusted_host_states(guard)
    assert state.tpm == host_name(QUOTE_KEY, GOOD).root()
    check_host_state(guard, host_name(QUOTE_KEY, GOOD))
    with pytest.raises(AuthorizationError, match="no TPM host state on this TPM"):
        check_host_state(guard, host_name(OTHER_KEY, GOOD))
    bad = dict(GOOD)
    bad[7] = b"\x07" * 32
    with pytest.raises(AuthorizationError, match="PCR 7 is 0707"):
        check_host_state(guard, host_name(QUOTE_KEY, bad))


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


def test_a_pcrs_tail_matches_only_a_tpm2_hosts_first_extension() -> None:
    """The guard alone: a "Host" tail rule is a TPM host's state, never a PCRs
    extension further down a name nor one on a key(...) principal."""
    other = pcrs_ext({n: b"\x33" * 32 for n in GOOD})
    guard = guard_trusting(GOOD)
    tpm = host_name(QUOTE_KEY, GOOD)
    assert guard.is_authorized(tpm, "Host")
    assert not guard.is_authorized(host_name(QUOTE_KEY, {n: b"\x33" * 32 for n in GOOD}), "Host")
    assert not guard.is_authorized(tpm.root().extend(other).extend(pcrs_ext(GOOD)), "Host")
    key_host = auth.Prin("key", auth.Bytes(b"\x01" * 32)).extend(pcrs_ext(GOOD))
    assert not guard.is_authorized(key_host, "Host")
