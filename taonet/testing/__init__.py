"""Tools for testing code built on taonet. Never use them in a program.

* :class:`CertificateFactory`: policy, host and program certificates and CRLs that
  a policy key really signed but that are wrong in exactly one field (see
  :class:`CertFields` and :class:`CrlFields`), so that negative tests reach the
  checks made after the signature; :func:`replace_oid` edits the signed bytes
  for faults the builders refuse to make (a repeated extension).
* :func:`check_tao`: the conformance suite every :class:`~taonet.hosts.Tao` backend
  passes (names, random bytes, shared secrets, sealing under each policy, tampering,
  size limits, attestations, counters and rollback-protected sealing), given
  :data:`TaoFactory` factories for fresh Taos of one program and of another.
"""

from __future__ import annotations

from taonet.testing._certs import CertFields, CertificateFactory, CrlFields, replace_oid
from taonet.testing._tao import TaoFactory, check_tao

__all__ = [
    "CertFields",
    "CertificateFactory",
    "CrlFields",
    "TaoFactory",
    "check_tao",
    "replace_oid",
]
