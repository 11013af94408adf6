"""Finding a hosted program's Tao host: ``async with taonet.hosts.parent() as tao``.

A host starts each program with these environment variables (the original's):

* ``CLOUDPROXY_TAO_HOST_CHANNEL_TYPE``: ``pipe``, ``unix`` or ``file``
  (``tpm``/``tpm2`` name hardware hosts, which are not reached through here). The
  channel type alone says that there is a host and how to reach it, as in the
  original's ``tao.Parent()``;
* ``CLOUDPROXY_TAO_HOST_TYPE``: ``root`` or ``stacked`` (informational). taonet's
  hosts set it, the original CloudProxy host does not. Only ``none`` changes
  anything: it says that there is no host, whatever the channel type;
* ``CLOUDPROXY_TAO_HOST_SPEC``: for ``pipe``, ``tao::RPC+tao::FDMessageChannel(R, W)``
  with the read and write file descriptors; for ``file``,
  ``tao::RPC+tao::FileMessageChannel(/path)`` (e.g. a virtio serial port); for
  ``unix``, the socket path to dial.

:func:`parent` opens that channel and returns an :class:`RPCTao` on it. Anything
missing or malformed is a HostError that names the variable; a channel that cannot
be opened (a closed descriptor, no such file or socket) is a HostError whose
``__cause__`` is the OSError.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from typing import Final

import trio

from taonet._edges import map_os_errors
from taonet._errors import HostError
from taonet.hosts._rpc import RPCTao

__all__ = ["HOST_CHANNEL_TYPE", "HOST_SPEC", "HOST_TYPE", "open_host_channel", "parent"]

HOST_TYPE: Final = "CLOUDPROXY_TAO_HOST_TYPE"
HOST_CHANNEL_TYPE: Final = "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE"
HOST_SPEC: Final = "CLOUDPROXY_TAO_HOST_SPEC"

_FD_SPEC: Final = re.compile(r"^tao::RPC\+tao::FDMessageChannel\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_FILE_SPEC: Final = re.compile(r"^tao::RPC\+tao::FileMessageChannel\((.+)\)$")


async def open_host_channel(environ: Mapping[str, str] | None = None) -> trio.abc.Stream:
    """Open the stream to this program's host, as the environment describes it."""
    env = os.environ if environ is None else environ
    channel = env.get(HOST_CHANNEL_TYPE)
    spec = env.get(HOST_SPEC)
    if not channel:
        raise HostError(f"no Tao host: {HOST_CHANNEL_TYPE} is not set")
    if env.get(HOST_TYPE) == "none":
        raise HostError(f"no Tao host: {HOST_TYPE} is 'none'")
    if spec is None:
        raise HostError(f"no Tao host: {HOST_SPEC} is not set")
    if channel == "pipe":
        match = _FD_SPEC.match(spec.strip())
        if match is None:
            raise HostError(f"{HOST_SPEC} {spec!r} is not tao::RPC+tao::FDMessageChannel(R, W)")
        read_fd, write_fd = (int(g) for g in match.groups())
        with map_os_errors(to=HostError, what=f"the Tao host pipe ({spec}) is not open"):
            # Duplicated: the streams own (and close) their descriptors.
            receive = trio.lowlevel.FdStream(os.dup(read_fd))
            try:
                send = trio.lowlevel.FdStream(os.dup(write_fd))
            except BaseException:
                receive.close()
                raise
        return trio.StapledStream(send, receive)
    if channel == "file":
        match = _FILE_SPEC.match(spec.strip())
        path = match.group(1).strip() if match else spec.strip()
        with map_os_errors(to=HostError, what=f"cannot open the Tao host channel {path}"):
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        return trio.StapledStream(trio.lowlevel.FdStream(os.dup(fd)), trio.lowlevel.FdStream(fd))
    if channel == "unix":
        with map_os_errors(to=HostError, what=f"cannot reach the Tao host at {spec}"):
            return await trio.open_unix_socket(spec)
    raise HostError(f"{HOST_CHANNEL_TYPE}={channel!r} is not a channel taonet can open")


@contextlib.asynccontextmanager
async def parent(environ: Mapping[str, str] | None = None) -> AsyncIterator[RPCTao]:
    """This program's host as a :class:`~taonet.hosts.Tao`, for the block's duration."""
    stream = await open_host_channel(environ)
    async with RPCTao.connect(stream) as tao:
        yield tao
