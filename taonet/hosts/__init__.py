"""Tao hosts: the async :class:`Tao` interface and its backends.

* :class:`SoftHost` / :class:`SoftTao`: a root host with soft keys in a
  password-protected keyset directory.
* Linux (stacked, child processes), TPM 2.0 and the RPC client come with later work.
"""

from __future__ import annotations

from taonet.hosts._soft import SoftHost, SoftTao
from taonet.hosts._tao import (
    SEAL_POLICIES,
    SEAL_POLICY_ANY,
    SEAL_POLICY_FEW,
    SEAL_POLICY_SELF,
    Tao,
)

__all__ = [
    "SEAL_POLICIES",
    "SEAL_POLICY_ANY",
    "SEAL_POLICY_FEW",
    "SEAL_POLICY_SELF",
    "SoftHost",
    "SoftTao",
    "Tao",
]
