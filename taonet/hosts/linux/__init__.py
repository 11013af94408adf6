"""The Linux host: a Tao host that measures, starts and serves child processes.

Imported explicitly (``import taonet.hosts.linux``); :mod:`taonet.hosts` itself stays
portable and loads none of this (it only re-exports these names lazily, see there).

* :class:`LinuxHost`: a root or stacked host that measures, starts and serves child
  processes; :class:`LinuxHostConfig` is its ``host.toml`` and
  :func:`default_host_dir` says where a domain's host lives unless told otherwise.
* :class:`AdminClient` / :func:`serve_admin`: the admin socket (a unix socket
  checked with ``SO_PEERCRED``) that starts, lists and stops programs; the server
  hands requests to an :class:`AdminBackend` (a :class:`LinuxHost` is one) as
  :class:`StartRequest` from a :class:`Caller`, and answers with :class:`ProgramInfo`.
* :func:`select_programs`: which programs a selector names (an id or a unique prefix of
  one, a file name, a pid, or a principal), as the host and ``taonet stop`` read it;
  :class:`ProgramNotFoundError` and :class:`AmbiguousSelectorError` when it names none,
  or several where one is needed.
* :class:`TreeLimits`: the bounds on a program that is a directory
  (``[program_tree]`` in ``host.toml``); :func:`default_interpreters`: the
  interpreters ``taonet host init`` offers programs (``[interpreters]``).
* :func:`program_subprin_on`, :func:`program_rule_on`, :func:`host_config_at`: the
  name a host would give a program file, and the ``Execute`` rule for it, worked out
  without starting it (for a domain's policy tools).
* :data:`ADMIN_SOCKET`, :data:`LOCK_FILE`, :data:`LOG_FILE`, :data:`CONFIG_FILE`: the
  names of the files a host keeps in its directory (the admin socket, the file a
  running host holds locked, its log when started in the background, ``host.toml``).
"""

from __future__ import annotations

from taonet.hosts.linux._admin import serve_admin
from taonet.hosts.linux._admin_client import AdminClient
from taonet.hosts.linux._config import (
    ADMIN_SOCKET,
    CONFIG_FILE,
    LOCK_FILE,
    LOG_FILE,
    LinuxHostConfig,
    default_host_dir,
)
from taonet.hosts.linux._host import LinuxHost
from taonet.hosts.linux._hosted import AdminBackend, Caller, ProgramInfo, StartRequest
from taonet.hosts.linux._interpreters import default_interpreters
from taonet.hosts.linux._naming import host_config_at, program_rule_on, program_subprin_on
from taonet.hosts.linux._select import (
    AmbiguousSelectorError,
    ProgramNotFoundError,
    program_file,
    select_programs,
)
from taonet.hosts.linux._tree import TreeLimits

__all__ = [
    "ADMIN_SOCKET",
    "CONFIG_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "AdminBackend",
    "AdminClient",
    "AmbiguousSelectorError",
    "Caller",
    "LinuxHost",
    "LinuxHostConfig",
    "ProgramInfo",
    "ProgramNotFoundError",
    "StartRequest",
    "TreeLimits",
    "default_host_dir",
    "default_interpreters",
    "host_config_at",
    "program_file",
    "program_rule_on",
    "program_subprin_on",
    "select_programs",
    "serve_admin",
]

# What this namespace exports reports it as its home (``taonet.hosts.linux.LinuxHost``,
# not the private module that defines it).
for _public in (
    AdminBackend,
    AdminClient,
    AmbiguousSelectorError,
    Caller,
    LinuxHost,
    LinuxHostConfig,
    ProgramInfo,
    ProgramNotFoundError,
    StartRequest,
    TreeLimits,
    default_host_dir,
    default_interpreters,
    host_config_at,
    program_file,
    program_rule_on,
    program_subprin_on,
    select_programs,
    serve_admin,
):
    _public.__module__ = __name__
del _public
