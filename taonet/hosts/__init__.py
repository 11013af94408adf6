"""Tao hosts: the async :class:`Tao` interface and its backends.

* :class:`SoftHost` / :class:`SoftTao`: a root host with soft keys in a
  password-protected keyset directory.
* :class:`RPCTao` / :func:`serve_tao_rpc`: the Tao RPC between a hosted program and
  its host (client and per-program server).
* :func:`parent`: a hosted program's Tao, found from the CLOUDPROXY_TAO_HOST_*
  environment variables (pipe, unix socket or file channel).
* :class:`MessageStream`: 4-byte length-prefixed frames over any trio stream (the
  framing of the Tao RPC and of Tao channels' protocols).
* Linux (stacked, child processes) and TPM 2.0 come with later work.
"""

from __future__ import annotations

from taonet.hosts._messages import MessageStream
from taonet.hosts._parent import open_host_channel, parent
from taonet.hosts._rpc import DEFAULT_RPC_MAX_FRAME, RPCTao, serve_tao_rpc
from taonet.hosts._soft import SoftHost, SoftTao
from taonet.hosts._tao import (
    SEAL_POLICIES,
    SEAL_POLICY_ANY,
    SEAL_POLICY_FEW,
    SEAL_POLICY_SELF,
    Tao,
)

__all__ = [
    "DEFAULT_RPC_MAX_FRAME",
    "SEAL_POLICIES",
    "SEAL_POLICY_ANY",
    "SEAL_POLICY_FEW",
    "SEAL_POLICY_SELF",
    "MessageStream",
    "RPCTao",
    "SoftHost",
    "SoftTao",
    "Tao",
    "open_host_channel",
    "parent",
    "serve_tao_rpc",
]
