"""The RPC client passes the Tao conformance suite: RPCTao against serve_tao_rpc.

Over an in-memory stream and over real OS pipes (the shape of a hosted program's
channel), in front of a soft host certified by a domain; and in front of a Tao
without counters, whose "not supported" must reach the client the same way from all
four counter methods.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from taonet.domain import Domain
from taonet.hosts import RPCTao, SoftHost, SoftTao, Tao, serve_tao_rpc
from taonet.testing import TaoFactory
from tests.tao_doubles import check_programs

TIMEOUT = 120


class SoftTaoWithoutCounters(SoftTao):
    """A soft Tao that keeps the interface's defaults for the counter methods."""

    init_counter = Tao.init_counter
    get_counter = Tao.get_counter
    rollback_protected_seal = Tao.rollback_protected_seal
    rollback_protected_unseal = Tao.rollback_protected_unseal


def memory_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    return trio.testing.memory_stream_pair()


def pipe_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two streams joined by two OS pipes, one each way."""
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    FdStream = trio.lowlevel.FdStream
    client = trio.StapledStream(FdStream(up_w), FdStream(down_r))
    server = trio.StapledStream(FdStream(down_w), FdStream(up_r))
    return client, server


def rpc_factory(
    make_server_tao: Callable[[], Tao],
    make_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]],
) -> TaoFactory:
    @asynccontextmanager
    async def make() -> AsyncIterator[Tao]:
        client_stream, server_stream = make_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, make_server_tao())
            async with RPCTao.connect(client_stream) as tao:
                yield tao
            # The client closed its end: the server sees the end of the channel.

    return make


@pytest.mark.parametrize("make_pair", [memory_pair, pipe_pair], ids=["memory", "pipes"])
async def test_rpc_tao_in_front_of_a_soft_host(
    make_domain: Callable[..., Domain],
    make_host: Callable[..., SoftHost],
    make_pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]],
) -> None:
    domain = make_domain()
    host = make_host(domain)
    with trio.fail_after(TIMEOUT):
        await check_programs(
            lambda name: rpc_factory(lambda: host.tao_for(name), make_pair),
            host.name,
            policy_cert=domain.policy_cert,
        )


async def test_rpc_tao_in_front_of_a_tao_without_counters(
    make_domain: Callable[..., Domain], make_host: Callable[..., SoftHost]
) -> None:
    domain = make_domain()
    host = make_host(domain)
    with trio.fail_after(TIMEOUT):
        await check_programs(
            lambda name: rpc_factory(lambda: SoftTaoWithoutCounters(host, name), memory_pair),
            host.name,
            policy_cert=domain.policy_cert,
            counters=False,
        )
