"""The handshake target: bare Tao channel handshakes against a local domain's server.

For this target the tool makes its own local domain in a temporary directory
(:func:`make_local_credentials`): a fresh policy key (Liberal guard), a soft host
certified by it, and two programs on that host, a server and a client, each with a
key and a program certificate issued by the domain for an attestation of its host.
A channel server (:func:`serve_handshakes_process`) runs in a process of its own with
the server's identity; a request (:class:`HandshakeClient`) opens a channel with the
client's identity, waits for the server's verdict, and closes it: one TLS 1.3 mutual
handshake and the name checks on both sides.

The keys are generated for the run and live only in the temporary directory and in
the processes' memory; the domain and host keysets are protected by a random
password with the default KDF.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import tempfile
from multiprocessing.connection import Connection

import attrs
import trio

from taonet import auth
from taonet.channel import ChannelIdentity, open_channel, serve_channels
from taonet.crypto import Signer
from taonet.domain import Domain, DomainTemplate, ProgramCertifier
from taonet.hosts import SoftHost

__all__ = [
    "HandshakeClient",
    "LocalCredentials",
    "make_local_credentials",
    "serve_handshakes_process",
]

#: Bound on a server's connections: above the generator's own bound on clients.
_MAX_CONNECTIONS = 4096


@attrs.frozen
class LocalCredentials:
    """A local domain's policy certificate and two programs' keys (PKCS#8) and
    certificates (the server's empty for the secret target: its server keeps its own)."""

    policy_cert: bytes
    server_key: bytes = attrs.field(repr=False)
    server_cert: bytes
    client_key: bytes = attrs.field(repr=False)
    client_cert: bytes

    def server(self) -> ChannelIdentity:
        return ChannelIdentity(
            self.policy_cert,
            signer=Signer.from_pkcs8_der(self.server_key),
            certificate=self.server_cert,
        )

    def client(self) -> ChannelIdentity:
        return ChannelIdentity(
            self.policy_cert,
            signer=Signer.from_pkcs8_der(self.client_key),
            certificate=self.client_cert,
        )


def make_local_credentials() -> LocalCredentials:
    """A fresh local domain (in a temporary directory, removed after) and two programs."""
    return trio.run(_make_local_credentials)


async def _make_local_credentials() -> LocalCredentials:
    password = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="taonet-loadtest-domain-") as tmp:
        domain = Domain.create(f"{tmp}/domain", DomainTemplate(guard="Liberal"), password)
        policy = domain.unlock(password)
        host = SoftHost.create(f"{tmp}/host", password)
        host.set_root_endorsement(domain.certify_host(policy, host.public_key_der()))
        certifier = ProgramCertifier(domain, policy)

        async def program(tag: int) -> tuple[bytes, bytes]:
            name = domain.program_name(bytes([tag]) * 32, host=host.name)
            assert isinstance(name, auth.Prin)
            key = Signer.generate()
            attestation = await host.tao_for(name).attest(
                auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
            )
            issued = certifier.certify(attestation.to_bytes(), key.public_key_der())
            return key.to_pkcs8_der(), issued.der

        server_key, server_cert = await program(1)
        client_key, client_cert = await program(2)
        return LocalCredentials(
            domain.policy_cert, server_key, server_cert, client_key, client_cert
        )


async def _until_closed(stream: trio.abc.Stream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async with stream:
            while await stream.receive_some():
                pass


def serve_handshakes_process(conn: Connection, credentials: LocalCredentials) -> None:
    """A process's main: serve Tao channels on 127.0.0.1, send the port over ``conn``,
    stop when it closes. Each channel is held until the client closes it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us when it is done

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(
                    serve_channels,
                    _until_closed,
                    0,
                    credentials.server(),
                    max_connections=_MAX_CONNECTIONS,
                    max_per_address=None,
                    idle_timeout=60.0,
                )
            )
            conn.send(int(listeners[0].socket.getsockname()[1]))
            await trio.to_thread.run_sync(_wait_quietly, conn, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _wait_quietly(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


class HandshakeClient:
    """One client: a request is a whole channel (handshake, verdict, close)."""

    def __init__(self, address: tuple[str, int], identity: ChannelIdentity) -> None:
        self._address = address
        self._identity = identity

    #: What a request of this client is (the report's operation).
    last_op = "handshake"

    async def prepare(self) -> None:
        """Nothing to do before a request: it opens what it needs within its bound."""

    async def settle(self) -> None:
        """Nothing to do after a request: it closed what failed."""

    async def request(self) -> None:
        """Open a channel, wait for the server's verdict, close it (raises on failure)."""
        stream = await open_channel(self._address[0], self._address[1], self._identity)
        try:
            await stream.wait_accepted()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await trio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        """Nothing stays open between requests."""
