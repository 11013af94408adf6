"""Tao hosts: the async :class:`Tao` interface and its backends.

* :class:`SoftHost` / :class:`SoftTao`: a root host with soft keys in a
  password-protected keyset directory.
* :class:`LinuxHost`: a root or stacked host that measures, starts and serves child
  processes (:class:`LinuxHostConfig` is its ``host.toml``); administered over a unix
  socket with :class:`AdminClient` (:func:`serve_admin` is the server side).
* :class:`RPCTao` / :func:`serve_tao_rpc`: the Tao RPC between a hosted program and
  its host (client and per-program server).
* :func:`parent`: a hosted program's Tao, found from the CLOUDPROXY_TAO_HOST_*
  environment variables (pipe, unix socket or file channel).
* :class:`MessageStream`: 4-byte length-prefixed frames over any trio stream (the
  framing of the Tao RPC and of Tao channels' protocols).
* Monotonic counters and rollback-protected sealing are part of :class:`Tao`;
  backends without them answer "not supported by this host".
* TPM 2.0 comes with later work.
"""

from __future__ import annotations

from taonet.hosts._admin import serve_admin
from taonet.hosts._admin_client import AdminClient
from taonet.hosts._hosted import AdminBackend, Caller, ProgramInfo, StartRequest
from taonet.hosts._linux import LinuxHost
from taonet.hosts._linux_config import LinuxHostConfig, default_host_dir
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
    "AdminBackend",
    "AdminClient",
    "Caller",
    "LinuxHost",
    "LinuxHostConfig",
    "MessageStream",
    "ProgramInfo",
    "RPCTao",
    "SoftHost",
    "SoftTao",
    "StartRequest",
    "Tao",
    "default_host_dir",
    "open_host_channel",
    "parent",
    "serve_admin",
    "serve_tao_rpc",
]
