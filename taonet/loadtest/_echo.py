"""The echo target: a trivial TLS echo server and the client side of one request.

The server answers each byte it reads with the same byte; it does nothing else, so
what the generator drives against it is the generator's own ceiling. It runs in a
process of its own (:func:`serve_echo_process`), on 127.0.0.1 with a self-signed
certificate made for the run; the clients trust exactly that certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import ssl
from multiprocessing.connection import Connection
from typing import Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from taonet import ProtocolError
from taonet._log import get_logger

__all__ = ["EchoClient", "make_echo_credentials", "serve_echo", "serve_echo_process"]

log = get_logger(__name__)

#: Bytes read at a time by the server.
_CHUNK: Final = 65536


def make_echo_credentials() -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for 127.0.0.1 and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "taonet loadtest echo")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _server_context(cert_pem: bytes, key_pem: bytes, directory: str) -> ssl.SSLContext:
    import os
    import tempfile

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # ssl loads a certificate chain from files only: a private temporary file each.
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cert_file = os.path.join(tmp, "cert.pem")
        key_file = os.path.join(tmp, "key.pem")
        for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(cert_file, key_file)
    return context


async def _echo(stream: trio.abc.Stream) -> None:
    try:
        async with stream:
            while data := await stream.receive_some(_CHUNK):
                await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away: nothing to answer


async def serve_echo(
    cert_pem: bytes,
    key_pem: bytes,
    *,
    tmp_dir: str,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TLS echo on 127.0.0.1 (a port chosen by the system) until cancelled."""
    context = _server_context(cert_pem, key_pem, tmp_dir)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    ssl_listeners = [trio.SSLListener(lis, context, https_compatible=False) for lis in listeners]
    log.info("echo_server_listening", port=port)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, _echo, ssl_listeners)
        task_status.started(port)


def serve_echo_process(conn: Connection, cert_pem: bytes, key_pem: bytes, tmp_dir: str) -> None:
    """A process's main: serve echo, send the port over ``conn``, stop when it closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us when it is done

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(serve_echo, cert_pem, key_pem, tmp_dir=tmp_dir)
            )
            conn.send(port)
            # Anything from the parent, or its end of the pipe closing, stops the server.
            await trio.to_thread.run_sync(_wait_quietly, conn, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _wait_quietly(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


class EchoClient:
    """One client of an echo server: a request is ``size`` bytes sent and read back
    (the same bytes, or the request fails with ProtocolError: a server that sends
    anything else is not answering)."""

    def __init__(
        self, address: tuple[str, int], *, ca_pem: bytes | None, size: int, fresh: bool
    ) -> None:
        self._address = address
        self._context: ssl.SSLContext | None = None
        if ca_pem is not None:
            self._context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
            self._context.minimum_version = ssl.TLSVersion.TLSv1_3
        # Not all one byte, so that an answer shifted by a byte does not pass.
        self._payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        self._fresh = fresh
        self._stream: trio.abc.Stream | None = None

    async def _open(self) -> trio.abc.Stream:
        host, port = self._address
        if self._context is None:
            return await trio.open_tcp_stream(host, port)
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=self._context, https_compatible=False
        )
        await stream.do_handshake()
        return stream

    #: What a request of this client is (the report's operation).
    last_op = "echo"

    async def prepare(self) -> None:
        """Nothing to do before a request: it opens what it needs within its bound."""

    async def settle(self) -> None:
        """Nothing to do after a request: it closed what failed."""

    async def request(self) -> None:
        """Send one request and read its whole answer (raises on any failure)."""
        if self._stream is None:
            self._stream = await self._open()
        stream = self._stream
        try:
            await stream.send_all(self._payload)
            got = 0
            while got < len(self._payload):
                data = await stream.receive_some(len(self._payload) - got)
                if not data:
                    raise trio.BrokenResourceError("the echo server closed the connection")
                if data != self._payload[got : got + len(data)]:
                    # Not an echo (a server that floods whatever it likes): no answer.
                    raise ProtocolError("the echo server answered other bytes than were sent")
                got += len(data)
        except BaseException:
            await self.aclose()
            raise
        if self._fresh:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (the next request opens another)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            # Closing a connection the server already dropped is no failure.
            dropped = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1),
                contextlib.suppress(*dropped),
            ):
                await stream.aclose()
