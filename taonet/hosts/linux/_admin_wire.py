"""The Linux host's admin socket protocol: shared by the server and the client.

Wire format, in the style of the original's protorpc: a request is two frames (the
4-byte big-endian length framing of :mod:`taonet.wire`), an ``RPCHeader{op, seq}``
and then a ``LinuxAdminRequest`` body; a response is an ``RPCHeader{op, seq, error?}``
and then a ``LinuxAdminResponse`` body, empty when ``error`` is set. A request's header
frame is at most :data:`ADMIN_MAX_HEADER` (4 KiB), its body at most
:data:`ADMIN_MAX_FRAME` (1 MiB); a response's frames at most
:data:`ADMIN_MAX_RESPONSE` (16 MiB), since listing many programs with long names can
legitimately take more than a request ever needs. Both ends read and write through
:class:`taonet.wire.Envelope` (:func:`admin_envelope`), which decides those limits, the
end of the stream and truncation, and on the client checks that an answer names the
call awaited (its seq and op; any other breaks the connection). The server drops a
malformed request's connection without answering it (see :mod:`._admin`). An error
string is the envelope's
``"<Kind>: message"``, Kind the name of a :class:`~taonet.TaoError` class (see
:data:`taonet.wire.ERROR_KINDS`); the client raises that class again. A failure in the
host that is not a TaoError is answered as
``"HostError: internal error in the host (<ExceptionType>)"``.

A start request may carry the caller's stdin, stdout and stderr: the descriptors ride
as ``SCM_RIGHTS`` ancillary data on the one ``sendmsg`` that carries the request's
frames. ``fd_count`` says how many came (0 to 3) and ``stdio_mask`` which ones (bit 0
stdin, bit 1 stdout, bit 2 stderr). A request must arrive with exactly the
descriptors it announces; anything else (too few, too many, truncated ancillary data,
descriptors on another request) is a protocol error: the server closes every
descriptor it received and drops that connection. Every descriptor received is
either handed to the backend inside a :class:`~taonet.hosts.linux._hosted.StartRequest`
or closed.

The server is :mod:`taonet.hosts.linux._admin`, the client :mod:`taonet.hosts.linux._admin_client`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Final, TypeVar

from taonet import auth
from taonet._errors import CodecError, HostError, ProtocolError
from taonet.hosts.linux._hosted import (
    MAX_ARGS,
    MAX_ENV,
    MAX_STRING,
    ProgramInfo,
)
from taonet.hosts.linux._select import ID_DIGITS, is_program_id
from taonet.wire import Envelope, Role, message_class

__all__ = [
    "ADMIN_MAX_FRAME",
    "ADMIN_MAX_HEADER",
    "ADMIN_MAX_RESPONSE",
    "ADMIN_OPS",
    "HOST_NAME",
    "KILL",
    "LIST",
    "MAX_STDIO_FDS",
    "SHUTDOWN",
    "START",
    "STOP",
    "WAIT",
    "admin_envelope",
]


#: Largest frame (header or body) of a request: what the server reads.
ADMIN_MAX_FRAME: Final = 1024 * 1024
#: Largest header frame of a request (an operation name and a sequence number).
ADMIN_MAX_HEADER: Final = 4096
#: Largest frame (header or body) of a response: what the server sends, the client reads.
ADMIN_MAX_RESPONSE: Final = 16 * 1024 * 1024
#: Descriptors a request may carry: stdin, stdout and stderr.
MAX_STDIO_FDS: Final = 3

START: Final = "LinuxHost.StartHostedProgram"
STOP: Final = "LinuxHost.StopHostedProgram"
KILL: Final = "LinuxHost.KillHostedProgram"
LIST: Final = "LinuxHost.ListHostedPrograms"
WAIT: Final = "LinuxHost.WaitHostedProgram"
HOST_NAME: Final = "LinuxHost.TaoHostName"
SHUTDOWN: Final = "LinuxHost.Shutdown"
#: Every admin operation.
ADMIN_OPS: Final = frozenset({START, STOP, KILL, LIST, WAIT, HOST_NAME, SHUTDOWN})

_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_UINT64_MAX: Final = 2**64 - 1

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------
# Shared checks and conversions
# --------------------------------------------------------------------------------------


def admin_envelope(role: Role) -> Envelope:
    """One end of an admin connection: the envelope with the admin protocol's limits."""
    if role is Role.SERVER:
        return Envelope(
            role,
            body_limit=ADMIN_MAX_FRAME,
            header_limit=ADMIN_MAX_HEADER,
            max_frame=ADMIN_MAX_RESPONSE,
        )
    return Envelope(role, body_limit=ADMIN_MAX_RESPONSE, max_frame=ADMIN_MAX_RESPONSE)


def _check_string(value: object, what: str, *, empty: bool = False) -> str:
    """A bounded string without NULs (what exec and the kernel can take)."""
    if not isinstance(value, str):
        raise HostError(f"{what} must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise HostError(f"{what} is not valid unicode") from None
    if size > MAX_STRING:
        raise HostError(f"{what} is {size} bytes, over the {MAX_STRING}-byte limit")
    if not value and not empty:
        raise HostError(f"{what} is empty")
    if "\0" in value:
        raise HostError(f"{what} contains a NUL character")
    return value


def _check_args(args: Sequence[object]) -> tuple[str, ...]:
    if len(args) > MAX_ARGS:
        raise HostError(f"{len(args)} arguments is over the limit of {MAX_ARGS}")
    return tuple(_check_string(arg, f"argument {i}", empty=True) for i, arg in enumerate(args))


def _check_env_entry(key: object, value: object) -> tuple[str, str]:
    key = _check_string(key, "an environment variable name")
    if "=" in key:
        raise HostError(f"environment variable name {key!r} contains '='")
    return key, _check_string(value, f"environment variable {key}", empty=True)


def _check_env(entries: Sequence[tuple[object, object]]) -> tuple[tuple[str, str], ...]:
    if len(entries) > MAX_ENV:
        raise HostError(f"{len(entries)} environment variables is over the limit of {MAX_ENV}")
    checked = tuple(_check_env_entry(key, value) for key, value in entries)
    if len({key for key, _ in checked}) != len(checked):
        raise HostError("the environment names a variable twice")
    return checked


def _check_int(value: int, what: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HostError(f"{what} {value!r} does not fit the admin protocol")
    return value


def _program_message(info: ProgramInfo) -> Any:
    msg = message_class("LinuxAdminProgram")(
        name=auth.encode(info.name),
        pid=_check_int(info.pid, "pid", _INT32),
        uid=_check_int(info.uid, "uid", _INT32),
        gid=_check_int(info.gid, "gid", _INT32),
        path=info.path,
        program_hash=bytes(info.program_hash),
        program_id=_check_int(info.program_id, "program id", _INT64),
    )
    if info.exit_status is not None:
        msg.exit_status = _check_int(info.exit_status, "exit status", _INT32)
    if info.started_ns is not None:
        msg.started_ns = _check_int(info.started_ns, "start time", _INT64)
    if info.instance_id:
        msg.instance_id = _check_string(info.instance_id, "program id")
    return msg


def _program_info(msg: Any, op: str) -> ProgramInfo:
    try:
        name = auth.decode_prin(bytes(msg.name))
    except CodecError as exc:
        raise ProtocolError(f"{op}: bad program name: {exc}") from None
    path = msg.path
    if not isinstance(path, str):
        raise ProtocolError(f"{op}: a program path is not valid UTF-8")
    instance_id = msg.instance_id if msg.HasField("instance_id") else ""
    if instance_id and not is_program_id(instance_id):
        raise ProtocolError(f"{op}: a program id is not {ID_DIGITS} lowercase hex digits")
    return ProgramInfo(
        name=name,
        pid=int(msg.pid),
        uid=int(msg.uid),
        gid=int(msg.gid),
        path=path,
        program_hash=bytes(msg.program_hash),
        program_id=int(msg.program_id),
        exit_status=int(msg.exit_status) if msg.HasField("exit_status") else None,
        started_ns=int(msg.started_ns) if msg.HasField("started_ns") else None,
        instance_id=instance_id,
    )


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)
