"""The soft Tao passes the Tao conformance suite: on disk, in memory, and as a stacked core."""

from __future__ import annotations

from collections.abc import Callable

import trio

from taonet import auth
from taonet.attestation import UNROOTED
from taonet.crypto import Keyset
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.testing import TaoFactory
from tests.tao_doubles import check_programs, factory, program

TIMEOUT = 120


def soft_factory(host: SoftHost) -> Callable[[auth.Prin], TaoFactory]:
    """For each program's name, a factory of that program's Tao on ``host``."""
    return lambda name: factory(lambda: host.tao_for(name))


async def test_a_soft_host_on_disk_certified_by_a_domain(
    make_domain: Callable[..., Domain], make_host: Callable[..., SoftHost]
) -> None:
    domain = make_domain()
    host = make_host(domain)
    with trio.fail_after(TIMEOUT):
        await check_programs(soft_factory(host), host.name, policy_cert=domain.policy_cert)
        # Counter labels are unique per run: the suite runs again on the same host,
        # and the counters it left are in the host's sealed table on disk.
        await check_programs(soft_factory(host), host.name, policy_cert=domain.policy_cert)
    assert host.counters is not None
    assert host.counters.store.count_under(program(host.name, 1)) > 0


async def test_a_soft_host_in_memory() -> None:
    host = SoftHost(Keyset.generate())
    with trio.fail_after(TIMEOUT):
        await check_programs(soft_factory(host), host.name, policy_cert=UNROOTED)


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
        await check_programs(soft_factory(core), given, policy_cert=domain.policy_cert)
