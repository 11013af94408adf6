"""Domains and guards: the policy key, what it trusts, and how that is decided.

* :class:`Domain` opens or creates a domain directory; :class:`DomainTemplate` and
  :class:`DomainConfig` are its TOML files. The policy key signs the configuration
  (``domain.sig``: every key of ``domain.toml``, the policy certificate, the guard and
  its rules) and :meth:`Domain.load` refuses a domain whose files differ from it.
* Guards (:class:`LiberalGuard`, :class:`ConservativeGuard`, :class:`ACLGuard`) answer
  ``Authorized(P, op, args)`` queries; their evaluation is pure.
* :class:`ProgramCertifier` checks a program's attestation and issues its program
  certificate (the domain service's core).
* :func:`sign_domain_crl` signs the domain's CRL, numbered past every earlier one and
  listing every serial it ever revoked (``policy_keys/crl_state``);
  :func:`audit_behind` says what an audit log restored from a backup lacks.
* :func:`host_state_rule`, :func:`any_tpm_host_rule`, :func:`check_host_state`,
  :func:`trusted_host_states`: the TPM host states (PCR values) the domain trusts, as
  ``Authorized(tpm2([h]).PCRs(...), "Host")`` (one TPM) or
  ``Authorized(ext.PCRs(...), "Host")`` (every certified TPM) rules of its ACL guard.
* :func:`measure_file`, :func:`program_subprin`, :func:`policy_key_subprin` name programs.
"""

from __future__ import annotations

from taonet.domain._certifier import ProgramCertifier
from taonet.domain._domain import Domain, DomainConfig, DomainTemplate
from taonet.domain._guard import (
    GUARD_KINDS,
    ACLGuard,
    ConservativeGuard,
    Guard,
    LiberalGuard,
    authorized,
)
from taonet.domain._hosts import (
    HOST_OP,
    TrustedHostState,
    any_tpm_host_rule,
    check_host_state,
    host_state_rule,
    trusted_host_states,
)
from taonet.domain._programs import measure_file, policy_key_subprin, program_subprin
from taonet.domain._revocations import (
    CRL_FILE,
    CRL_STATE_FILE,
    RevocationRecord,
    audit_behind,
    sign_domain_crl,
)

__all__ = [
    "CRL_FILE",
    "CRL_STATE_FILE",
    "GUARD_KINDS",
    "HOST_OP",
    "ACLGuard",
    "ConservativeGuard",
    "Domain",
    "DomainConfig",
    "DomainTemplate",
    "Guard",
    "LiberalGuard",
    "ProgramCertifier",
    "RevocationRecord",
    "TrustedHostState",
    "any_tpm_host_rule",
    "audit_behind",
    "authorized",
    "check_host_state",
    "host_state_rule",
    "measure_file",
    "policy_key_subprin",
    "program_subprin",
    "sign_domain_crl",
    "trusted_host_states",
]
