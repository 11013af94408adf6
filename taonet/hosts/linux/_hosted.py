"""What a Linux host and its admin socket share: callers, start requests, program records.

The admin socket (:mod:`taonet.hosts.linux._admin`) turns requests from a unix socket into
calls on an :class:`AdminBackend` (the :class:`~taonet.hosts.linux.LinuxHost`), passing
the caller's credentials as the kernel reported them (``SO_PEERCRED``). The backend
decides what the caller may do:

* anyone who can reach the socket may start programs; a root host runs them as the
  caller's uid, gid and supplementary groups, a host run by an ordinary user only for
  that user (or root);
* stopping, killing or waiting for a program is for its owner, the host's owner and
  root; shutting the host down is for the host's owner and root;
* listing shows root every program, and anyone else only the programs that run as
  its uid (the admin socket filters :meth:`AdminBackend.list_programs`): other users'
  program paths and names are theirs.

A program is selected by its id (or a unique prefix of it), its file name, its pid
or its full principal name in text form; only a principal may select several running
instances of the same program (see :mod:`taonet.hosts.linux._select`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

import attrs

from taonet import auth

__all__ = [
    "MAX_ARGS",
    "MAX_ENV",
    "MAX_STRING",
    "AdminBackend",
    "Caller",
    "ProgramInfo",
    "StartRequest",
]

#: Bounds on a start request (checked by the admin socket before the backend sees it).
MAX_ARGS: Final = 4096
MAX_ENV: Final = 4096
MAX_STRING: Final = 64 * 1024


@attrs.frozen
class Caller:
    """Who is on the other end of an admin connection, from the kernel.

    ``groups`` are the caller's supplementary groups when it connected
    (``SO_PEERGROUPS``; none where the kernel cannot tell).
    """

    uid: int
    gid: int
    pid: int
    groups: tuple[int, ...] = ()


def _fd(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 0):
        raise ValueError(f"{attribute.name} must be a file descriptor")


@attrs.frozen
class StartRequest:
    """Start ``path`` with ``args`` (not including argv[0]) in ``cwd`` with ``env``.

    ``path`` may be a program directory, ``entry`` the file in it that runs (None:
    its ``__main__.py``). ``stdin``/``stdout``/``stderr`` are file descriptors
    received from the caller, or None for /dev/null. The request owns them: whoever
    consumes it closes them.
    """

    path: str
    args: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=tuple)
    entry: str | None = attrs.field(default=None, kw_only=True)
    stdin: int | None = attrs.field(default=None, validator=_fd)
    stdout: int | None = attrs.field(default=None, validator=_fd)
    stderr: int | None = attrs.field(default=None, validator=_fd)

    def fds(self) -> tuple[int, ...]:
        """The descriptors this request holds (to close once used)."""
        return tuple(fd for fd in (self.stdin, self.stdout, self.stderr) if fd is not None)


@attrs.frozen
class ProgramInfo:
    """A hosted program as the host knows it."""

    name: auth.Prin
    pid: int
    uid: int
    gid: int
    #: The path the caller asked for (what runs is the host's private copy of it).
    path: str
    program_hash: bytes
    program_id: int
    #: None while running; the exit code, or -N if killed by signal N.
    exit_status: int | None = None
    #: When the host started it (nanoseconds since the epoch); None if not said.
    started_ns: int | None = None
    #: The id the host gave this instance (32 lowercase hex digits); "" if not said.
    instance_id: str = ""

    @property
    def running(self) -> bool:
        return self.exit_status is None


class AdminBackend(Protocol):
    """What the admin socket asks of a host (see the module docstring for the rules).

    Refusals raise :class:`~taonet.AuthorizationError`; a selector that matches no
    program, or any other failure, raises another :class:`~taonet.TaoError`.
    """

    async def start_program(self, request: StartRequest, caller: Caller) -> ProgramInfo:
        """Measure, check ("Execute") and start a program; the request's fds are consumed."""
        ...

    async def stop_programs(
        self, selector: str, caller: Caller, *, kill: bool = False
    ) -> Sequence[ProgramInfo]:
        """SIGTERM (or SIGKILL) the process groups of the selected running programs."""
        ...

    def list_programs(self) -> Sequence[ProgramInfo]:
        """Every program still running."""
        ...

    async def wait_program(self, selector: str, caller: Caller) -> ProgramInfo:
        """Wait until the selected program (one) exits; return it with its exit status."""
        ...

    def host_name(self) -> auth.Prin:
        """The host's own Tao name."""
        ...

    async def shutdown(self, caller: Caller) -> None:
        """Stop every program (killing those that outlive the grace period), then exit."""
        ...
