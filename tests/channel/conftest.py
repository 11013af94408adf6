"""Fixtures for channel tests: a domain, a certified soft host, program identities."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from taonet import auth
from taonet.channel import ChannelIdentity, TaoStream, open_channel, serve_channels
from taonet.crypto import Signer
from taonet.domain import Domain, ProgramCertifier
from taonet.hosts import SoftHost
from tests.conftest import PASSWORD


class Programs:
    """Issues real program certificates through the domain's certifier."""

    def __init__(self, domain: Domain, host: SoftHost) -> None:
        self.domain = domain
        self.host = host
        self.certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))

    def name(self, tag: int) -> auth.Prin:
        name = self.domain.program_name(bytes([tag]) * 32, host=self.host.name)
        assert isinstance(name, auth.Prin)
        return name

    async def identity(self, tag: int) -> ChannelIdentity:
        name = self.name(tag)
        key = Signer.generate()
        att = await self.host.tao_for(name).attest(
            auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
        )
        issued = self.certifier.certify(att.to_bytes(), key.public_key_der())
        return ChannelIdentity(self.domain.policy_cert, signer=key, certificate=issued.der)


@pytest.fixture
def programs(make_domain: Callable[..., Domain], make_host: Callable[..., SoftHost]) -> Programs:
    domain = make_domain(guard="Liberal")
    return Programs(domain, make_host(domain))


async def echo(stream: TaoStream) -> None:
    """A channel handler that sends back what it receives, until the end of the stream."""
    while data := await stream.receive_some():
        await stream.send_all(data)


def recording_echo(seen: list[TaoStream]) -> Callable[[TaoStream], Awaitable[None]]:
    """An :func:`echo` handler that first appends each stream it serves to ``seen``."""

    async def handler(stream: TaoStream) -> None:
        seen.append(stream)
        await echo(stream)

    return handler


async def start_server(
    nursery: trio.Nursery, identity: ChannelIdentity, handler: Any = None, **kw: Any
) -> int:
    """Serve channels (by default, :func:`echo`) on 127.0.0.1:0 and return the port."""
    listeners = await nursery.start(
        functools.partial(serve_channels, handler or echo, 0, identity, **kw)
    )
    return int(listeners[0].socket.getsockname()[1])


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


__all__ = ["Programs", "echo", "open_channel", "recording_echo", "start_server"]
