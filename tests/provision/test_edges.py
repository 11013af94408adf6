"""The domain service client's failures of the outside world leave as ProtocolError."""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from taonet import AuthenticationError, ProtocolError, auth
from taonet.channel import TaoStream, serve_channels
from taonet.crypto import Signer
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.provision import fetch_crl, request_certificate
from taonet_services.domain_service import DomainService
from tests.channel.conftest import Programs, start_server
from tests.conftest import PASSWORD

Handler = Callable[[TaoStream], Awaitable[None]]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def domain(make_domain: Callable[..., Domain]) -> Domain:
    return make_domain(guard="Liberal")


@pytest.fixture
async def fake_service(
    domain: Domain,
) -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Serve a handler under the real domain service's identity; return its port."""
    with DomainService.open(domain.path, PASSWORD) as service:
        identity = service.identity
    async with trio.open_nursery() as nursery:

        async def serve(handler: Handler) -> int:
            listeners = await nursery.start(
                functools.partial(serve_channels, handler, 0, identity, allow_anonymous=True)
            )
            port: int = listeners[0].socket.getsockname()[1]
            return port

        yield serve
        nursery.cancel_scope.cancel()


async def test_refused(domain: Domain, closed_port: int) -> None:
    with trio.fail_after(10), pytest.raises(ProtocolError) as caught:
        await fetch_crl("127.0.0.1", closed_port, domain.policy_cert)
    assert str(caught.value) == (
        f"cannot reach the channel server at 127.0.0.1:{closed_port}: Connection refused"
    )
    assert isinstance(caught.value.__cause__, OSError)


async def test_no_answer_in_time(
    domain: Domain,
    fake_service: Callable[[Handler], Awaitable[int]],
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def silent(stream: TaoStream) -> None:
        await trio.sleep_forever()

    port = await fake_service(silent)
    with trio.fail_after(120), pytest.raises(ProtocolError) as caught:
        await fetch_crl("127.0.0.1", port, domain.policy_cert)
    assert str(caught.value) == f"no answer from the domain service at 127.0.0.1:{port}: timed out"
    assert isinstance(caught.value.__cause__, trio.TooSlowError)


async def _half_answer(stream: TaoStream) -> None:
    await stream.receive_some()  # the request
    await stream.send_all(struct.pack(">I", 100) + b"\x0a" * 10)  # 10 of 100 bytes


async def test_closed_mid_answer(
    domain: Domain, fake_service: Callable[[Handler], Awaitable[int]]
) -> None:
    async def half_then_close(stream: TaoStream) -> None:
        await _half_answer(stream)
        await stream.aclose()  # a clean TLS close, in the middle of a frame

    port = await fake_service(half_then_close)
    with trio.fail_after(10), pytest.raises(ProtocolError) as caught:
        await fetch_crl("127.0.0.1", port, domain.policy_cert)
    # Truncation is decided by the envelope, and raised as ProtocolError from it.
    assert str(caught.value) == (
        "bad answer from the domain service: the peer closed inside a frame: 10 of 100 bytes"
    )
    assert isinstance(caught.value.__cause__, ProtocolError)


async def test_broken_mid_answer(
    domain: Domain, fake_service: Callable[[Handler], Awaitable[int]]
) -> None:
    async def half_then_break(stream: TaoStream) -> None:
        await _half_answer(stream)
        await trio.aclose_forcefully(stream)  # no close_notify: TLS says truncated

    port = await fake_service(half_then_break)
    with trio.fail_after(10), pytest.raises(ProtocolError) as caught:
        await fetch_crl("127.0.0.1", port, domain.policy_cert)
    assert str(caught.value).startswith(f"no answer from the domain service at 127.0.0.1:{port}: ")
    assert isinstance(caught.value.__cause__, trio.BrokenResourceError)


async def test_an_impostor_service_never_sees_the_request(
    make_domain: Callable[..., Domain], make_host: Callable[..., SoftHost]
) -> None:
    """The request waits with the client's last handshake flight until the server's
    name is checked: a program of the domain posing as its domain service (its
    certificate is good, its name is not a service of the policy key) gets the end
    of the handshake and then nothing, never the attestation."""
    domain = make_domain(guard="Liberal")
    programs = Programs(domain, make_host(domain))
    heard: list[bytes] = []
    done = trio.Event()

    async def impostor(stream: TaoStream) -> None:
        try:
            while chunk := await stream.receive_some():
                heard.append(bytes(chunk))
        finally:
            done.set()

    name = programs.name(9)
    key = Signer.generate()
    att = await programs.host.tao_for(name).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start_server(
                nursery, await programs.identity(1), impostor, allow_anonymous=True
            )
            with pytest.raises(AuthenticationError, match="not a service of this domain"):
                await request_certificate(
                    "127.0.0.1", port, domain.policy_cert, att, key.public_key_der()
                )
            await done.wait()  # the client hung up: the impostor read all it will get
            nursery.cancel_scope.cancel()
    assert heard == []
