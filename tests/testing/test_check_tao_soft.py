"""The soft Tao passes the Tao conformance suite: on disk, in memory, and as a stacked core."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from taonet import auth
from taonet.attestation import UNROOTED
from taonet.crypto import Keyset
from taonet.domain import Domain
from taonet.hosts import SoftHost, Tao
from taonet.testing import TaoFactory, check_tao
from tests.tao_doubles import program

TIMEOUT = 120


def soft_factory(host: SoftHost, name: auth.Prin) -> TaoFactory:
    @asynccontextmanager
    async def make() -> AsyncIterator[Tao]:
        yield host.tao_for(name)

    return make


async def test_a_soft_host_on_disk_certified_by_a_domain(
    make_domain: Callable[..., Domain], make_host: Callable[..., SoftHost]
) -> None:
    domain = make_domain()
    host = make_host(domain)
    first, second = program(host.name, 1), program(host.name, 2)
    with trio.fail_after(TIMEOUT):
        await check_tao(
            soft_factory(host, first),
            soft_factory(host, second),
            policy_cert=domain.policy_cert,
            counters=True,
        )
        # Counter labels are unique per run: the suite runs again on the same host,
        # and the counters it left are in the host's sealed table on disk.
        await check_tao(
            soft_factory(host, first),
            soft_factory(host, second),
            policy_cert=domain.policy_cert,
            counters=True,
        )
    assert host.counters is not None
    assert host.counters.store.count_under(first) > 0


async def test_a_soft_host_in_memory() -> None:
    host = SoftHost(Keyset.generate())
    with trio.fail_after(TIMEOUT):
        await check_tao(
            soft_factory(host, program(host.name, 1)),
            soft_factory(host, program(host.name, 2)),
            policy_cert=UNROOTED,
            counters=True,
        )


async def test_a_soft_core_of_a_stacked_host_speaking_for_its_given_name(
    make_domain: Callable[..., Domain], make_host: Callable[..., SoftHost]
) -> None:
    domain = make_domain()
    parent = make_host(domain)
    given = program(parent.name, 9)
    keyset = Keyset.generate()
    with trio.fail_after(TIMEOUT):
        delegation = await parent.tao_for(given).attest(
            auth.Speaksfor(
                delegate=auth.key_principal(keyset.signer.public_key_der()), delegator=given
            )
        )
        core = SoftHost(keyset, name=given, delegation=delegation)
        # Its programs' attestations chain through the parent's to the domain.
        await check_tao(
            soft_factory(core, program(given, 1)),
            soft_factory(core, program(given, 2)),
            policy_cert=domain.policy_cert,
            counters=True,
        )
