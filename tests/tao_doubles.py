"""Test doubles for the Tao interface and names of programs, shared by the host, RPC,
provisioning and conformance tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from taonet import auth
from taonet.attestation import Attestation, Unrooted
from taonet.certs import PolicyAnchor
from taonet.hosts import Tao
from taonet.testing import TaoFactory, check_tao


def program(name: auth.Prin, tag: int) -> auth.Prin:
    """A program's name under ``name``: one for each ``tag`` (0 to 255)."""
    return name.extend(auth.PrinExt("Program", (auth.Bytes(bytes([tag]) * 32),)))


def factory(make: Callable[[], Tao]) -> TaoFactory:
    """A check_tao factory whose every Tao is ``make()``."""

    @asynccontextmanager
    async def make_tao() -> AsyncIterator[Tao]:
        yield make()

    return make_tao


async def check_programs(
    factory_for: Callable[[auth.Prin], TaoFactory],
    parent: auth.Prin,
    *,
    policy_cert: bytes | PolicyAnchor | Unrooted,
    counters: bool = True,
) -> None:
    """check_tao on programs 1 and 2 under ``parent``, each Tao from ``factory_for(name)``."""
    await check_tao(
        factory_for(program(parent, 1)),
        factory_for(program(parent, 2)),
        policy_cert=policy_cert,
        counters=counters,
    )


class ForwardingTao(Tao):
    """A Tao that hands the seven basic calls to ``inner`` and keeps the interface's
    defaults for the counter methods (they raise NotSupportedError)."""

    def __init__(self, inner: Tao) -> None:
        self.inner = inner

    async def get_tao_name(self) -> auth.Prin:
        return await self.inner.get_tao_name()

    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        await self.inner.extend_tao_name(subprin)

    async def get_random_bytes(self, n: int) -> bytes:
        return await self.inner.get_random_bytes(n)

    async def get_shared_secret(self, n: int, policy: str = "self") -> bytes:
        return await self.inner.get_shared_secret(n, policy)

    async def attest(
        self,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        return await self.inner.attest(message, issuer=issuer, time=time, expiration=expiration)

    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        return await self.inner.seal(data, policy)

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        return await self.inner.unseal(sealed)
