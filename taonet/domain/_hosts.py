"""Trusted host states: which TPM host states (PCR values) a domain's policy trusts.

A certified quote key proves which TPM speaks, not what booted on the machine it is
in. So a domain also names the states it trusts, as rules of its ACL guard (signed
by the policy key like every rule, and bound into ``domain.sig``, so a hand-edited
``acls`` file is refused):

* ``Authorized(tpm2([h]).PCRs("0,1,2,3,4,7", "hex,hex,..."), "Host")`` trusts that
  state (those PCR numbers with those SHA-256 values) on the one TPM whose quote key
  hashes to ``h``: the host ``taonet host show`` printed. This is what
  ``taonet domain policy --add-host SPEC`` writes for the full name.
* ``Authorized(ext.PCRs("...", "..."), "Host")`` trusts that state on every TPM whose
  quote key the domain's quote service ever certified, so for every user of every
  such TPM (anyone who can open the TPM can make and certify a quote key of its own
  and sign as ``tpm2([its key]).PCRs(...)``). ``--add-host`` writes it only for the
  bare ``PCRs(...)`` part.

``SPEC`` is what ``taonet host show`` prints for a TPM host, its name
``tpm2([...]).PCRs("nums", "hexvals")`` (pinned to that TPM), or the PCRs part alone,
``PCRs("nums", "hexvals")`` (``ext.`` in front allowed; any TPM).

The domain asks its guard ``Authorized(tpm2([h]).PCRs(...), "Host")`` for the host
part of every program whose attestation chain is rooted in a TPM
(:func:`check_host_state`): the PCR numbers and values must equal those of a trusted
state exactly (another PCR selection is another state). A refusal names the PCRs
that differ from the closest state trusted on any TPM or on the requester's TPM;
states pinned to other TPMs are never compared nor named (the log has them). A
Liberal guard trusts every state, a Conservative one none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from taonet import auth
from taonet._errors import AuthorizationError, CodecError, ConfigError
from taonet._log import get_logger
from taonet.attestation.tpm2 import host_pcrs, parse_pcrs_ext, pcrs_ext
from taonet.domain._guard import ACLGuard, Guard

__all__ = [
    "HOST_OP",
    "TrustedHostState",
    "any_tpm_host_rule",
    "check_host_state",
    "host_part",
    "host_state_rule",
    "trusted_host_states",
]

#: The operation of the guard rules naming trusted host states.
HOST_OP: Final = "Host"
#: The principal type of TPM 2.0 hosts.
TPM2: Final = "tpm2"
_PCRS: Final = "PCRs"
#: Hex digits of a PCR value shown in a refusal (the full values: ``taonet host show``).
_SHOWN: Final = 16
#: Longest SPEC text accepted (24 PCRs of SHA-256 take about 1,700 characters).
MAX_SPEC: Final = 8192
#: Bytes of a quote key's hash in a tpm2([...]) name.
_KEY_HASH: Final = 32

log = get_logger(__name__)


@attrs.frozen
class TrustedHostState:
    """One trusted host state: its rule, its PCR values, and the TPM it is pinned to
    (``None``: any TPM the domain certified)."""

    rule: auth.Form
    pcrs: dict[int, bytes] = attrs.field(hash=False)
    tpm: auth.Prin | None = None


def host_state_rule(spec: str) -> auth.Form:
    """The rule trusting the host state ``spec`` names (see the module docstring):
    ``Authorized(tpm2([h]).PCRs(...), "Host")`` (that TPM only) for a full name,
    ``Authorized(ext.PCRs(...), "Host")`` (every certified TPM) for a bare
    ``PCRs(...)``. ConfigError naming what is wrong with a spec of another form."""
    text = spec.strip()
    if len(text) > MAX_SPEC:
        raise ConfigError(f"a host state is at most {MAX_SPEC} characters")
    who: auth.Prin | auth.PrinTail
    try:
        if text.startswith(f"{TPM2}("):
            prin = auth.parse_prin(text)
            pcrs = host_pcrs(prin)
            if pcrs is None:
                raise ConfigError(f"{_short(text)} names no PCRs")
            if len(prin.ext.exts) != 1:
                raise ConfigError(
                    f"{_short(text)} names more than a TPM host: give the name taonet host "
                    'show prints, tpm2([...]).PCRs("nums", "hexvals"), nothing after it'
                )
            key = prin.key_hash
            if not (isinstance(key, auth.Bytes) and len(key.value) == _KEY_HASH):
                raise ConfigError(f"{_short(text)}: a tpm2([...]) quote key hash is 32 bytes")
            who = auth.Prin(TPM2, key, auth.SubPrin((pcrs_ext(pcrs),)))
        else:
            body = text.removeprefix("ext.")
            ext = auth.parse_prinext(body)
            if ext.name != _PCRS:
                raise ConfigError(f"{_short(text)} is not a PCRs(...) extension")
            who = auth.PrinTail(auth.SubPrin((pcrs_ext(parse_pcrs_ext(ext)),)))
    except CodecError as exc:
        raise ConfigError(
            f'{_short(text)} is not a TPM host state (tpm2([...]).PCRs("nums", "hexvals") '
            f'as taonet host show prints it, or PCRs("nums", "hexvals")): {exc}'
        ) from None
    return auth.Pred("Authorized", (who, auth.Str(HOST_OP)))


def any_tpm_host_rule(rule: auth.Form) -> auth.Form:
    """``Authorized(ext.PCRs(...), "Host")`` for the state of a rule from
    :func:`host_state_rule` (itself for a rule that already trusts any TPM)."""
    if isinstance(rule, auth.Pred) and rule.args and isinstance(rule.args[0], auth.Prin):
        tail = auth.PrinTail(auth.SubPrin(rule.args[0].ext.exts[:1]))
        return auth.Pred(rule.name, (tail, *rule.args[1:]))
    return rule


def trusted_host_states(guard: Guard) -> list[TrustedHostState]:
    """The host states ``guard``'s rules trust, in rule order (none but for ACL)."""
    if not isinstance(guard, ACLGuard):
        return []
    states = []
    for rule in guard.rules:
        if not (
            isinstance(rule, auth.Pred)
            and rule.name == "Authorized"
            and rule.args[1:] == (auth.Str(HOST_OP),)
        ):
            continue
        who = rule.args[0]
        try:
            if isinstance(who, auth.PrinTail) and len(who.ext.exts) == 1:
                states.append(TrustedHostState(rule, parse_pcrs_ext(who.ext.exts[0])))
            elif isinstance(who, auth.Prin) and who.type == TPM2 and len(who.ext.exts) == 1:
                states.append(TrustedHostState(rule, parse_pcrs_ext(who.ext.exts[0]), who.root()))
        except CodecError:
            continue  # not a PCRs extension: a rule of another kind, never matched here
    return states


def host_part(speaker: auth.Prin) -> auth.Prin | None:
    """``tpm2([h]).PCRs(...)`` of a name rooted in a TPM 2.0 host, None for other roots."""
    if speaker.type != TPM2:
        return None
    return auth.Prin(speaker.type, speaker.key_hash, auth.SubPrin(speaker.ext.exts[:1]))


def check_host_state(guard: Guard, speaker: auth.Prin, *, root_signer_type: str = "") -> None:
    """AuthorizationError unless ``guard`` trusts the TPM host state ``speaker`` is
    rooted in; nothing to check for a name rooted elsewhere.

    ``root_signer_type`` is the attestation chain's root signer type: a chain rooted
    in a ``tpm2`` signer whose speaker is not a ``tpm2(...)`` name is refused too.
    """
    host = host_part(speaker)
    if host is None:
        if root_signer_type == TPM2:
            raise AuthorizationError(
                f"the attestation is rooted in a TPM 2.0 quote key but speaks for "
                f"{_short(str(speaker))}, not for a tpm2(...).PCRs(...) host"
            )
        return
    reported = host_pcrs(host)
    if reported is None:
        raise AuthorizationError(f"the TPM host {_short(str(host))} reports no PCRs")
    if guard.is_authorized(host, HOST_OP):
        return
    # Only states trusted on any TPM or pinned to this one are compared, so a refusal
    # tells the requester nothing about the other TPMs a domain trusts (the log does).
    candidates = [s for s in trusted_host_states(guard) if s.tpm is None or s.tpm == host.root()]
    shown = _brief(host.root(), reported)
    if not candidates:
        log.info("host state refused: no state trusted on this TPM", host=_short(str(host)))
        raise AuthorizationError(
            f"the {guard.kind} guard trusts no TPM host state on this TPM, so not {shown}: add "
            "the name taonet host show prints with taonet domain policy --add-host"
        )
    closest = min(candidates, key=lambda s: len(pcr_differences(reported, s.pcrs)))
    differ = pcr_differences(reported, closest.pcrs) or ["no PCR differs"]
    log.info("host state refused", host=_short(str(host)), closest=_short(str(closest.rule)))
    raise AuthorizationError(
        f"the TPM host {shown} is in a state the domain does not trust: against the closest "
        f"trusted state ({_brief(closest.tpm, closest.pcrs)}), {'; '.join(differ)}"
    )


def pcr_differences(reported: Mapping[int, bytes], trusted: Mapping[int, bytes]) -> list[str]:
    """One line per PCR whose value (or presence) differs, ascending."""
    out = []
    for pcr in sorted(set(reported) | set(trusted)):
        have, want = reported.get(pcr), trusted.get(pcr)
        if have == want:
            continue
        if have is None:
            out.append(f"PCR {pcr} is trusted but not reported")
        elif want is None:
            out.append(f"PCR {pcr} is reported but not in the trusted state")
        else:
            out.append(f"PCR {pcr} is {_hex(have)} (trusted {_hex(want)})")
    return out


def _brief(tpm: auth.Prin | None, pcrs: Mapping[int, bytes]) -> str:
    """``tpm2([1f0c...]).PCRs("0,1,7", ...)``: enough to tell which, values left out
    (``ext.PCRs(...)`` for a state trusted on any TPM)."""
    numbers = ",".join(str(n) for n in sorted(pcrs))
    if tpm is None:
        return f'ext.PCRs("{numbers}", ...)'
    key = _hex(tpm.key_hash.value) if isinstance(tpm.key_hash, auth.Bytes) else "?"
    return f'{tpm.type}([{key}]).PCRs("{numbers}", ...)'


def _hex(value: bytes) -> str:
    text = value.hex()
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
