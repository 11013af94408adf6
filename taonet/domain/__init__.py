"""Domains and guards: the policy key, what it trusts, and how that is decided.

* :class:`Domain` opens or creates a domain directory; :class:`DomainTemplate` and
  :class:`DomainConfig` are its TOML files. The policy key signs the configuration
  (``domain.sig``: every key of ``domain.toml``, the policy certificate, the guard and
  its rules) and :meth:`Domain.load` refuses a domain whose files differ from it.
* Guards (:class:`LiberalGuard`, :class:`ConservativeGuard`, :class:`ACLGuard`) answer
  ``Authorized(P, op, args)`` queries; their evaluation is pure.
* :class:`ProgramCertifier` checks a program's attestation and issues its program
  certificate (the domain service's core).
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
from taonet.domain._programs import measure_file, policy_key_subprin, program_subprin

__all__ = [
    "GUARD_KINDS",
    "ACLGuard",
    "ConservativeGuard",
    "Domain",
    "DomainConfig",
    "DomainTemplate",
    "Guard",
    "LiberalGuard",
    "ProgramCertifier",
    "authorized",
    "measure_file",
    "policy_key_subprin",
    "program_subprin",
]
