"""check_tao can fail: each deliberately broken Tao below is caught by the check it breaks.

Every broken Tao wraps a correct soft Tao and gets one thing wrong, the way a
backend could (a random source that repeats, a policy that is not bound, an
unchecked size, an attestation that ignores its issuer, a counter that goes down,
an old blob that still opens, ...). The suite must fail on each, naming the check;
and the unbroken wrapper must pass, so that it is the one fault that is caught.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from taonet import HostError, auth
from taonet.attestation import UNROOTED, Attestation
from taonet.crypto import Keyset
from taonet.hosts import SoftHost, Tao
from taonet.testing import TaoFactory, check_tao
from taonet.wire import parse
from tests.tao_doubles import ForwardingTao, factory, program

TIMEOUT = 60
NOT_SUPPORTED = "not supported by this host"


class Wrapped(ForwardingTao):
    """A correct Tao: every call, counters included, goes to ``inner``."""

    async def init_counter(self, label: str, counter: int) -> None:
        await self.inner.init_counter(label, counter)

    async def get_counter(self, label: str) -> int:
        return await self.inner.get_counter(label)

    async def rollback_protected_seal(self, label: str, data: bytes, policy: str = "self") -> bytes:
        return await self.inner.rollback_protected_seal(label, data, policy)

    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        return await self.inner.rollback_protected_unseal(sealed)


# -- one fault each ---------------------------------------------------------------------


class RepeatingRandom(Wrapped):
    async def get_random_bytes(self, n: int) -> bytes:
        await self.inner.get_random_bytes(n)
        return bytes(n)


class ShortRandom(Wrapped):
    async def get_random_bytes(self, n: int) -> bytes:
        return (await self.inner.get_random_bytes(n))[:-1]


class UnboundedRandom(Wrapped):
    async def get_random_bytes(self, n: int) -> bytes:
        return os.urandom(n) if isinstance(n, int) and n >= 0 else b""


class PolicyBlindSecret(Wrapped):
    async def get_shared_secret(self, n: int, policy: str = "self") -> bytes:
        await self.inner.get_shared_secret(n, policy)  # still refuses what it should
        return await self.inner.get_shared_secret(n, "self")


class UnstableSecret(Wrapped):
    async def get_shared_secret(self, n: int, policy: str = "self") -> bytes:
        await self.inner.get_shared_secret(n, policy)
        return os.urandom(n)


class WrongPolicyUnseal(Wrapped):
    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        data, _ = await self.inner.unseal(sealed)
        return data, "self"


class VisiblePlaintext(Wrapped):
    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        return data + await self.inner.seal(data, policy)

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        # Finds the real blob after the copy of the data (checks what it can).
        for i in range(len(sealed) + 1):
            try:
                data, policy = await self.inner.unseal(sealed[i:])
            except HostError:
                continue
            if sealed[:i] == data:
                return data, policy
        raise HostError("not sealed data")


class SelfMeansHost(Wrapped):
    """Seals "self" for every program on the host (the binding is not made)."""

    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        if policy == "self":
            return await self.inner.seal(b"S" + data, "any")
        return await self.inner.seal(b"O" + data, policy)

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        data, policy = await self.inner.unseal(sealed)
        return data[1:], "self" if data[:1] == b"S" else policy


class AppendedBytesIgnored(Wrapped):
    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        try:
            return await self.inner.unseal(sealed)
        except HostError:
            return await self.inner.unseal(sealed[:-1])


class WrongErrorClass(Wrapped):
    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        try:
            return await self.inner.unseal(sealed)
        except HostError as exc:
            raise ValueError(str(exc)) from None


class TruncatingSeal(Wrapped):
    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        return await self.inner.seal(data[: 16 * 1024 * 1024], policy)


class IssuerIgnored(Wrapped):
    async def attest(self, message: auth.Form, **options: Any) -> Attestation:
        options.pop("issuer", None)
        return await self.inner.attest(message, **options)


class IssuerUnchecked(Wrapped):
    """Uses the issuer before checking that it is a principal (a soft host did)."""

    async def attest(self, message: auth.Form, **options: Any) -> Attestation:
        issuer = options.get("issuer")
        if issuer is not None and not issuer.is_sub_principal_of(await self.get_tao_name()):
            raise HostError(f"issuer {issuer} is not the caller or under it")
        return await self.inner.attest(message, **options)


class TimesIgnored(Wrapped):
    async def attest(self, message: auth.Form, **options: Any) -> Attestation:
        return await self.inner.attest(message, issuer=options.get("issuer"))


class ExtensionIgnored(Wrapped):
    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        if not isinstance(subprin, auth.SubPrin):
            raise HostError("extend_tao_name takes a SubPrin")


class ExtensionOnlyShown(Wrapped):
    """Reports the extended name but keeps acting as the name it started with."""

    def __init__(self, inner: Tao) -> None:
        super().__init__(inner)
        self.shown: auth.Prin | None = None

    async def get_tao_name(self) -> auth.Prin:
        return self.shown or await self.inner.get_tao_name()

    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        if not isinstance(subprin, auth.SubPrin):
            raise HostError("extend_tao_name takes a SubPrin")
        self.shown = (await self.get_tao_name()).extend(subprin)


class CounterGoesDown(Wrapped):
    async def init_counter(self, label: str, counter: int) -> None:
        try:
            await self.inner.init_counter(label, counter)
        except HostError:
            if isinstance(counter, int) and counter >= 0 and isinstance(label, str) and label:
                return  # "counters only increase" swallowed
            raise


class RollbackUnnoticed(Wrapped):
    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        try:
            return await self.inner.rollback_protected_unseal(sealed)
        except HostError:
            data, policy = await self.inner.unseal(sealed)
            try:
                msg = parse("RollbackSealedData", data, what="rollback-protected data")
            except Exception:
                raise HostError("not rollback-protected data") from None
            return bytes(msg.protected_data), policy


class WithoutCounters(ForwardingTao):
    """A correct Tao without counters: the interface's defaults raise NotSupportedError."""


class HalfCounters(WithoutCounters):
    """Says it has no counters, yet one of the four methods answers."""

    async def get_counter(self, label: str) -> int:
        return 0


class MixedUpUnderLoad(Wrapped):
    """Keeps the request in shared state across a checkpoint: concurrent calls mix."""

    last = b""

    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        MixedUpUnderLoad.last = data
        await trio.lowlevel.checkpoint()
        return await self.inner.seal(MixedUpUnderLoad.last, policy)


def wrapped_factory(
    host: SoftHost, name: auth.Prin, wrapper: Callable[[Tao], Tao] = Wrapped
) -> TaoFactory:
    return factory(lambda: wrapper(host.tao_for(name)))


async def run_suite(wrapper: Callable[[Tao], Tao], *, counters: bool) -> None:
    host = SoftHost(Keyset.generate())
    with trio.fail_after(TIMEOUT):
        await check_tao(
            wrapped_factory(host, program(host.name, 1), wrapper),
            wrapped_factory(host, program(host.name, 2)),
            policy_cert=UNROOTED,
            counters=counters,
        )


@pytest.mark.parametrize(
    ("wrapper", "counters"),
    [(Wrapped, True), (WithoutCounters, False)],
    ids=["full", "no-counters"],
)
async def test_the_unbroken_wrappers_pass(wrapper: Callable[[Tao], Tao], counters: bool) -> None:
    await run_suite(wrapper, counters=counters)


BROKEN: list[tuple[Callable[[Tao], Tao], bool, str]] = [
    (RepeatingRandom, True, "get_random_bytes: two draws of 32 random bytes are equal"),
    (ShortRandom, True, "get_random_bytes: get_random_bytes(1) returned 0 bytes"),
    (UnboundedRandom, True, "get_random_bytes: get_random_bytes(-1): expected HostError"),
    (PolicyBlindSecret, True, "get_shared_secret: two policies give the same shared secret"),
    (UnstableSecret, True, "get_shared_secret: get_shared_secret(32, 'any') differs"),
    (WrongPolicyUnseal, True, "seal and unseal: unseal of a blob sealed under 'few' returned"),
    (VisiblePlaintext, True, "seal and unseal: the data sealed under 'self' is visible"),
    (SelfMeansHost, True, "seal and another program: another program unsealing a 'self' blob"),
    (AppendedBytesIgnored, True, "tampered sealed data: unseal of a blob with a byte appended"),
    (WrongErrorClass, True, "expected HostError, got ValueError"),
    (TruncatingSeal, True, "seal size limits: seal of 16777217 bytes: expected HostError"),
    (IssuerIgnored, True, "attest: attest with issuer"),
    (TimesIgnored, True, "attest: asked for times"),
    (IssuerUnchecked, True, "attest with a str issuer: expected TypeError or HostError, got Attr"),
    (MixedUpUnderLoad, True, "concurrent calls: concurrent call"),
    (CounterGoesDown, True, "counters: init_counter below the current value: expected HostError"),
    (RollbackUnnoticed, True, "unseal of an older rollback-protected blob: expected HostError"),
    (WithoutCounters, True, "check_tao: counters: unexpected NotSupportedError: 'not supported"),
    (HalfCounters, False, "no counters: get_counter on a Tao without counters: expected"),
    (ExtensionIgnored, True, "extend_tao_name: extending"),
    (ExtensionOnlyShown, True, "extend_tao_name: after extending, attest speaks as"),
]


@pytest.mark.parametrize(
    ("wrapper", "counters", "failure"), BROKEN, ids=[case[0].__name__ for case in BROKEN]
)
async def test_a_broken_tao_fails_the_check_it_breaks(
    wrapper: Callable[[Tao], Tao], counters: bool, failure: str
) -> None:
    with pytest.raises(AssertionError) as caught:
        await run_suite(wrapper, counters=counters)
    assert failure in str(caught.value)
    assert str(caught.value).startswith("check_tao: ")


async def test_a_host_whose_keys_change_between_instances_fails() -> None:
    """A fresh Tao of the same program must keep its secrets and open its blobs."""
    first = SoftHost(Keyset.generate())
    name = program(first.name, 1)
    hosts = iter([first])

    @asynccontextmanager
    async def make() -> AsyncIterator[Tao]:
        # The same name each time, but after the first, new keys (a host that lost them).
        host = next(hosts, None) or SoftHost(Keyset.generate(), name=first.name)
        yield host.tao_for(name)

    with trio.fail_after(TIMEOUT), pytest.raises(AssertionError) as caught:
        await check_tao(
            make,
            wrapped_factory(first, program(first.name, 2)),
            policy_cert=UNROOTED,
            counters=True,
        )
    assert "a fresh Tao of the same program: a fresh Tao of the same program gets another" in str(
        caught.value
    )


async def test_check_tao_wants_counters_said() -> None:
    host = SoftHost(Keyset.generate())
    factory = wrapped_factory(host, program(host.name, 1))
    counters: Any = None
    with pytest.raises(TypeError, match="counters"):
        await check_tao(factory, factory, policy_cert=UNROOTED, counters=counters)
