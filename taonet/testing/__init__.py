"""Tools for testing code built on taonet. Never use them in a program.

* :class:`CertificateFactory`: policy, host and program certificates and CRLs that
  a policy key really signed but that are wrong in exactly one field (see
  :class:`CertFields` and :class:`CrlFields`), so that negative tests reach the
  checks made after the signature; :func:`replace_oid` edits the signed bytes
  for faults the builders refuse to make (a repeated extension).
"""

from __future__ import annotations

from taonet.testing._certs import CertFields, CertificateFactory, CrlFields, replace_oid

__all__ = ["CertFields", "CertificateFactory", "CrlFields", "replace_oid"]
