"""Turning a program's attestation into a program certificate: the domain service's core.

A program asks for a certificate with an attestation "P says key(K) speaksfor P",
made by its host, and the public key K. :class:`ProgramCertifier` signs only if
all of this holds, checked in this order:

1. the attestation validates fully: every signature, the delegation chain, every
   validity window against the clock, and a chain to the policy key through the
   host certificate (``root_endorsement``);
2. its message is ``key(K') speaksfor P`` where ``P`` is the speaker (a program
   delegating to a key, not speaking for someone else);
3. ``K'`` is the key presented: a valid attestation replayed with another key is
   refused, so nobody but the key's holder gets a certificate for it;
4. for a chain rooted in a TPM 2.0 host (``tpm2([h]).PCRs(...)``, its quote key
   certified by the policy key in step 1), the guard trusts the host's state:
   ``Authorized(tpm2([h]).PCRs(...), "Host")`` (see :mod:`taonet.domain._hosts`; a
   refusal names the PCRs that differ from the closest trusted state);
5. the guard authorizes ``P`` to "Execute".

Failures raise AuthenticationError (1-3) or AuthorizationError (4-5) saying what
failed; nothing is signed. The certificate never outlives the attestation.
Pure: no I/O; the service adds the network and the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taonet import auth
from taonet._errors import AuthenticationError, CodecError
from taonet.attestation import Attestation, Proven, validate
from taonet.certs import ProgramCertificate, issue_program_certificate
from taonet.crypto import Signer, Verifier
from taonet.domain._domain import Domain
from taonet.domain._hosts import check_host_state

__all__ = ["ProgramCertifier"]


class ProgramCertifier:
    """Checks attestations and issues program certificates for one domain."""

    def __init__(
        self, domain: Domain, policy_signer: Signer, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        if policy_signer.public_key_der() != domain.policy_anchor.public_key_der:
            raise AuthenticationError("the signer is not this domain's policy key")
        self._domain = domain
        self._signer = policy_signer
        self._clock = clock

    def check(self, attestation: Attestation | bytes, program_key_der: bytes) -> Proven:
        """Steps 1-5 of the module docstring; returns what the attestation proves."""
        now = self._clock()
        proven = validate(attestation, now_ns=now, policy_cert=self._domain.policy_anchor)
        message = proven.message
        if not isinstance(message, auth.Speaksfor):
            raise AuthenticationError(
                f"the attestation says {message}, not 'key(K) speaksfor {proven.speaker}'"
            )
        if message.delegator != proven.speaker:
            raise AuthenticationError(
                f"the attestation delegates for {message.delegator}, not for its speaker "
                f"{proven.speaker}"
            )
        try:
            presented = auth.key_principal(Verifier.from_der(program_key_der).public_key_der())
        except CodecError as exc:
            raise AuthenticationError(f"the presented program key is unusable: {exc}") from None
        if message.delegate != presented:
            raise AuthenticationError(
                f"the attestation delegates to {message.delegate}, "
                f"not to the presented key {presented}"
            )
        check_host_state(
            self._domain.guard, proven.speaker, root_signer_type=proven.root_signer_type
        )
        self._domain.guard.check(proven.speaker, "Execute")
        return proven

    def certify(
        self, attestation: Attestation | bytes, program_key_der: bytes
    ) -> ProgramCertificate:
        """Check the request and sign a program certificate for the proven program."""
        proven = self.check(attestation, program_key_der)
        return issue_program_certificate(
            self._signer,
            self._domain.policy_anchor,
            program_key_der,
            proven.speaker,
            now_ns=self._clock(),
            validity_days=self._domain.config.program_validity_days,
            not_after_ns=proven.not_after,
            domain_name=self._domain.config.name,
        )
