"""The connection to one TPM: command bytes out, response bytes back.

:class:`Transport` keeps ONE long-lived connection per TPM and is awaited directly
in trio: for swtpm a TCP stream to its server port (swtpm speaks plain TPM
command and response bytes there); no thread hand-off on the hot path, because
``trio.to_thread`` alone costs 0.12-0.3 ms, as much as a whole quote. A
``device:`` TCTI (``/dev/tpmrm0``, the kernel's resource manager) is opened
non-blocking and its response awaited with ``trio.lowlevel.wait_readable``, so the
caller's deadline also ends a wait on a TPM that never answers (a blocking read in
a thread could not be interrupted).

The caller serializes: it holds :attr:`Transport.lock` around each sequence of
commands (load, use, flush), so no two tasks interleave on the TPM. A connection
that failed, or a command cancelled between its send and its response, leaves the
connection closed; the next command reconnects. swtpm serves one connection at a
time, so :meth:`Transport.close` must be called before anything else (tpm2-pytss
setup work) talks to the same swtpm.

:class:`SyncTransport` is the blocking twin for one-time work outside trio
(creating a host's state directory).
"""

from __future__ import annotations

import os
import socket
from typing import Final

import attrs
import trio

from taonet._errors import HostError
from taonet._log import get_logger
from taonet.hosts.tpm2 import _setup, _wire

__all__ = ["ConnectionLost", "SyncTransport", "Tcti", "Transport", "parse_tcti"]

_log = get_logger(__name__)
_MAX_RETRIES: Final = 16


@attrs.frozen
class Tcti:
    """Where a TPM is: ``kind`` "swtpm" (``host``, ``port``) or "device" (``path``)."""

    kind: str
    host: str = "127.0.0.1"
    port: int = 2321
    path: str = "/dev/tpmrm0"


def parse_tcti(text: str) -> Tcti:
    """Parse ``swtpm:host=H,port=N``, ``swtpm:port=N`` or ``device:/dev/NAME``
    (the grammar of :func:`taonet.hosts.tpm2.parse_tcti`); ConfigError otherwise."""
    kind, conf = _setup.parse_tcti(text)
    if kind == "device":
        return Tcti("device", path=conf)
    fields = dict(item.partition("=")[::2] for item in conf.split(","))
    return Tcti("swtpm", host=fields["host"], port=int(fields["port"]))


class ConnectionLost(HostError):
    """The connection to the TPM failed (it is closed; the next command reconnects)."""


def _broken(tcti: Tcti, exc: BaseException | str) -> ConnectionLost:
    where = f"{tcti.host}:{tcti.port}" if tcti.kind == "swtpm" else tcti.path
    return ConnectionLost(f"lost the connection to the TPM at {where}: {exc}")


class Transport:
    """One TPM's command channel, for trio (see the module docstring)."""

    def __init__(self, tcti: Tcti) -> None:
        self.tcti = tcti
        #: Held by the caller around every command sequence.
        self.lock = trio.Lock()
        self._stream: trio.abc.Stream | None = None
        self._fd: int | None = None
        self._buffer = bytearray()
        #: Number of connections made (a reconnect may mean the TPM restarted).
        self.connections = 0

    @property
    def connected(self) -> bool:
        return self._stream is not None or self._fd is not None

    async def _connect(self) -> None:
        tcti = self.tcti
        try:
            if tcti.kind == "swtpm":
                self._stream = await trio.open_tcp_stream(tcti.host, tcti.port)
            else:
                self._fd = await trio.to_thread.run_sync(
                    os.open, tcti.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
                )
        except OSError as exc:
            raise _broken(tcti, f"cannot connect: {exc.strerror or exc}") from exc
        self._buffer.clear()
        self.connections += 1

    async def call(self, command: bytes) -> tuple[bytes, bytes]:
        """Send ``command``; (response handles, parameters) of its response.

        TpmError if the TPM refused it (retrying the TPM's "retry" warnings);
        HostError if the connection failed (it is then closed). Hold :attr:`lock`.
        """
        return _wire.split_response(command, await self.call_raw(command))

    async def call_raw(self, command: bytes) -> bytes:
        """Like :meth:`call`, but the whole successful response (sessions need its
        authorization area)."""
        for _ in range(_MAX_RETRIES):
            response = await self._exchange(command)
            try:
                _wire.split_response(command, response)
            except _wire.TpmError as exc:
                if exc.tpm_rc not in _wire.RETRYABLE:
                    raise
            else:
                return response
        raise HostError("the TPM kept answering 'retry'")

    async def _exchange(self, command: bytes) -> bytes:
        if not self.connected:
            await self._connect()
        try:
            if self._fd is not None:
                return await _device_exchange_async(self._fd, command)
            return await self._stream_exchange(command)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._close_now()
            raise _broken(self.tcti, exc) from exc
        except BaseException:
            # Failed or cancelled between send and response: the connection's
            # state is unknown, so it is not used again.
            await self._close_now()
            raise

    async def _stream_exchange(self, command: bytes) -> bytes:
        assert self._stream is not None
        await self._stream.send_all(command)
        buffer = self._buffer
        while len(buffer) < _wire.HEADER:
            await self._fill()
        size = _wire.response_size(bytes(buffer[: _wire.HEADER]))
        while len(buffer) < size:
            await self._fill()
        response = bytes(buffer[:size])
        del buffer[:size]
        if buffer:
            raise HostError("the TPM sent more than one response")
        return response

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(_wire.MAX_MESSAGE)
        if not chunk:
            raise trio.BrokenResourceError("the TPM closed the connection")
        self._buffer += chunk

    async def _close_now(self) -> None:
        stream, fd = self._stream, self._fd
        self._stream = self._fd = None
        self._buffer.clear()
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    async def close(self) -> None:
        """Close the connection (the next command reconnects)."""
        await self._close_now()


async def _device_exchange_async(fd: int, command: bytes) -> bytes:
    """One command on a non-blocking TPM device: the kernel takes a whole command per
    write and gives a whole response per read; waits are trio checkpoints, so the
    caller's cancel scope ends them (the caller then closes the descriptor)."""
    view = memoryview(command)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        view = view[written:]
    while True:
        try:
            response = os.read(fd, _wire.MAX_MESSAGE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        return _device_response(response)


def _device_exchange(fd: int, command: bytes) -> bytes:
    os.write(fd, command)
    return _device_response(os.read(fd, _wire.MAX_MESSAGE))


def _device_response(response: bytes) -> bytes:
    if not response:
        raise ConnectionError("the TPM device closed")
    if len(response) >= _wire.HEADER and _wire.response_size(response[: _wire.HEADER]) != len(
        response
    ):
        raise HostError("the TPM device returned a partial response")
    return response


class SyncTransport:
    """A blocking connection for one-time work outside trio (use as a context manager)."""

    def __init__(self, tcti: Tcti) -> None:
        self.tcti = tcti
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        try:
            if tcti.kind == "swtpm":
                self._sock = socket.create_connection((tcti.host, tcti.port), timeout=60)
            else:
                self._fd = os.open(tcti.path, os.O_RDWR)
        except OSError as exc:
            raise _broken(tcti, f"cannot connect: {exc.strerror or exc}") from exc

    def __enter__(self) -> SyncTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def call(self, command: bytes) -> tuple[bytes, bytes]:
        """As :meth:`Transport.call`, blocking."""
        for _ in range(_MAX_RETRIES):
            try:
                response = self._exchange(command)
            except OSError as exc:
                self.close()
                raise _broken(self.tcti, exc) from exc
            try:
                return _wire.split_response(command, response)
            except _wire.TpmError as exc:
                if exc.tpm_rc not in _wire.RETRYABLE:
                    raise
        raise HostError("the TPM kept answering 'retry'")

    def _exchange(self, command: bytes) -> bytes:
        if self._fd is not None:
            return _device_exchange(self._fd, command)
        if self._sock is None:
            raise _broken(self.tcti, "closed")
        self._sock.sendall(command)
        data = b""
        while len(data) < _wire.HEADER:
            data += self._recv()
        size = _wire.response_size(data[: _wire.HEADER])
        while len(data) < size:
            data += self._recv()
        if len(data) != size:
            raise HostError("the TPM sent more than one response")
        return data

    def _recv(self) -> bytes:
        assert self._sock is not None
        chunk = self._sock.recv(_wire.MAX_MESSAGE)
        if not chunk:
            raise ConnectionError("the TPM closed the connection")
        return chunk
