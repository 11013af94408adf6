"""Tao hosts: the async :class:`Tao` interface and its portable backends.

This package is portable: importing it, or calling :func:`parent`, loads nothing
Linux-specific. Backends tied to a platform are subpackages imported explicitly:
:mod:`taonet.hosts.linux` is the Linux host (supervisor, process launch, admin
socket); :mod:`taonet.hosts.tpm2` the TPM 2.0 root host (an optional extra).

* :class:`KeyCore` / :class:`AsyncKeyCore` / :class:`BoundTao`: a host's keys doing
  the Tao's operations for a named caller (synchronously, or awaited as a TPM's
  are), and the Tao of one program over them (the one class every backend uses;
  hosts differ only in their core and their :class:`Counters`).
* :class:`SoftHost` / :class:`SoftTao`: a root host with soft keys in a
  password-protected keyset directory (a :class:`KeyCore`; its Tao is a
  :class:`BoundTao`).
* :class:`RPCTao` / :func:`serve_tao_rpc`: the Tao RPC between a hosted program and
  its host (client and per-program server).
* :func:`parent`: a hosted program's Tao, found from the CLOUDPROXY_TAO_HOST_*
  environment variables (pipe, unix socket or file channel).
* :class:`MessageStream`: 4-byte length-prefixed frames over any trio stream (the
  framing of the Tao RPC and of Tao channels' protocols).
* Monotonic counters and rollback-protected sealing are part of :class:`Tao`;
  backends without them raise :class:`~taonet.NotSupportedError`.

For compatibility, the Linux host's names (:class:`~taonet.hosts.linux.LinuxHost`,
:class:`~taonet.hosts.linux.LinuxHostConfig`, :class:`~taonet.hosts.linux.AdminClient`,
:func:`~taonet.hosts.linux.serve_admin`, ...) are still reachable here: the first
access to one imports :mod:`taonet.hosts.linux` (and only then). They are not in
``__all__``; new code imports them from :mod:`taonet.hosts.linux`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taonet._messages import MessageStream
from taonet.hosts._core import AsyncKeyCore, BoundTao, Counters, KeyCore
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

if TYPE_CHECKING:
    from taonet.hosts.linux import AdminBackend as AdminBackend
    from taonet.hosts.linux import AdminClient as AdminClient
    from taonet.hosts.linux import Caller as Caller
    from taonet.hosts.linux import LinuxHost as LinuxHost
    from taonet.hosts.linux import LinuxHostConfig as LinuxHostConfig
    from taonet.hosts.linux import ProgramInfo as ProgramInfo
    from taonet.hosts.linux import StartRequest as StartRequest
    from taonet.hosts.linux import default_host_dir as default_host_dir
    from taonet.hosts.linux import serve_admin as serve_admin

__all__ = [
    "DEFAULT_RPC_MAX_FRAME",
    "SEAL_POLICIES",
    "SEAL_POLICY_ANY",
    "SEAL_POLICY_FEW",
    "SEAL_POLICY_SELF",
    "AsyncKeyCore",
    "BoundTao",
    "Counters",
    "KeyCore",
    "MessageStream",
    "RPCTao",
    "SoftHost",
    "SoftTao",
    "Tao",
    "open_host_channel",
    "parent",
    "serve_tao_rpc",
]

#: Names that moved to :mod:`taonet.hosts.linux`, still reachable from here.
_MOVED_TO_LINUX = frozenset(
    {
        "AdminBackend",
        "AdminClient",
        "Caller",
        "LinuxHost",
        "LinuxHostConfig",
        "ProgramInfo",
        "StartRequest",
        "default_host_dir",
        "serve_admin",
    }
)


def __getattr__(name: str) -> Any:
    # Called only for names not found above: import the Linux host on first use, so
    # that ``import taonet.hosts`` itself stays portable.
    if name in _MOVED_TO_LINUX:
        import taonet.hosts.linux

        return getattr(taonet.hosts.linux, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_MOVED_TO_LINUX})


# What this namespace exports reports it as its home (``taonet.hosts.SoftHost``, not
# the private module that defines it).
for _public in (
    AsyncKeyCore,
    BoundTao,
    Counters,
    KeyCore,
    MessageStream,
    RPCTao,
    SoftHost,
    SoftTao,
    Tao,
    open_host_channel,
    parent,
    serve_tao_rpc,
):
    _public.__module__ = __name__
del _public
