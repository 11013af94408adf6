"""One Tao-bound-to-a-name class over any key core (issue 9, item 1).

``SoftTao`` and the Linux host's per-program Tao used to be two copies of the same
class, each tied to the soft host; a TPM core would have made a third. Both are now
:class:`~taonet.hosts.BoundTao` over a :class:`~taonet.hosts.KeyCore`. Here a core
that is not a SoftHost, and offers nothing but the protocol's methods, passes the
whole Tao conformance suite through BoundTao with its own counters.
"""

from __future__ import annotations

import pytest
import trio

from taonet import HostError, auth
from taonet.attestation import UNROOTED, Attestation
from taonet.crypto import Keyset
from taonet.hosts import SEAL_POLICY_SELF, BoundTao, KeyCore, SoftHost
from taonet.hosts._counters import CounterStore, HostCounters
from tests.tao_doubles import check_programs, factory, program

TIMEOUT = 120


class OnlyTheProtocol:
    """A key core with the protocol's methods and nothing else (its keys happen to
    be a soft host's, kept out of reach of BoundTao)."""

    def __init__(self, keys: SoftHost) -> None:
        self._keys = keys

    @property
    def name(self) -> auth.Prin:
        return self._keys.name

    def check_caller(self, caller: auth.Prin) -> None:
        self._keys.check_caller(caller)

    def seal_for(self, caller: auth.Prin, data: bytes, policy: str = SEAL_POLICY_SELF) -> bytes:
        return self._keys.seal_for(caller, data, policy)

    def unseal_for(self, caller: auth.Prin, sealed: bytes) -> tuple[bytes, str]:
        return self._keys.unseal_for(caller, sealed)

    def shared_secret_for(self, caller: auth.Prin, n: int, policy: str = SEAL_POLICY_SELF) -> bytes:
        return self._keys.shared_secret_for(caller, n, policy)

    def attest_for(
        self,
        caller: auth.Prin,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        return self._keys.attest_for(
            caller, message, issuer=issuer, time=time, expiration=expiration
        )


async def test_a_core_that_is_not_a_soft_host_passes_check_tao() -> None:
    core: KeyCore = OnlyTheProtocol(SoftHost(Keyset.generate()))
    soft: KeyCore = SoftHost(Keyset.generate())  # the soft host is a key core too
    assert soft.name != core.name
    counters = HostCounters(core, await CounterStore.open(None))

    async def get_counters() -> HostCounters:
        return counters

    with trio.fail_after(TIMEOUT):
        await check_programs(
            lambda name: factory(lambda: BoundTao(core, name, get_counters)),
            core.name,
            policy_cert=UNROOTED,
        )


async def test_a_tao_cannot_be_bound_to_a_name_outside_its_core() -> None:
    core = OnlyTheProtocol(SoftHost(Keyset.generate()))
    other = SoftHost(Keyset.generate())
    counters = HostCounters(core, await CounterStore.open(None))

    async def get_counters() -> HostCounters:
        return counters

    with pytest.raises(HostError, match="is not this host"):
        BoundTao(core, program(other.name, 1), get_counters)


async def test_check_name_refuses_an_extension_and_keeps_the_old_name() -> None:
    core = SoftHost(Keyset.generate())
    name = program(core.name, 1)
    refused: list[auth.Prin] = []

    def at_most_two_extensions(candidate: auth.Prin) -> None:
        if len(candidate.ext.exts) > 2:
            refused.append(candidate)
            raise HostError("too long")

    tao = BoundTao(core, name, core.open_counters, check_name=at_most_two_extensions)
    sub = auth.SubPrin((auth.PrinExt("Role", (auth.Str("x"),)),))
    await tao.extend_tao_name(sub)
    assert await tao.get_tao_name() == name.extend(sub)
    with pytest.raises(HostError, match="too long"):
        await tao.extend_tao_name(sub)
    assert refused == [name.extend(sub).extend(sub)]
    assert await tao.get_tao_name() == name.extend(sub)
    # What it attests and seals is bound to the name it has, not the refused one.
    sealed = await tao.seal(b"data")
    assert core.unseal_for(name.extend(sub), sealed) == (b"data", SEAL_POLICY_SELF)
