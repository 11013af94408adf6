"""The disclosure peer against review A5's findings, each attack made as an attacker
would make it over real Tao channels on 127.0.0.1 (the fixtures of test_peer)."""

from __future__ import annotations

import pytest
import trio

from taonet import auth
from taonet.disclosure.peer import DisclosureRefusedError, request_disclosure
from taonet.protected import ObjectId
from tests.disclosure.test_peer import KEY, Net, net, nursery, serve

__all__ = ["net", "nursery"]  # fixtures, imported for pytest


# -- finding 1: an async owns hook ---------------------------------------------------------


@pytest.mark.parametrize("answer", [False, None, 0, "no"])
async def test_an_async_owns_that_says_no_releases_nothing(
    net: Net, nursery: trio.Nursery, answer: object
) -> None:
    """A thief signs Read(thief, KEY) with its own program certificate; v1's owns hook is
    async and says no. The hook's coroutine was taken for a yes (it is truthy)."""
    v1, thief = net.program("v1"), net.program("thief")
    asked: list[tuple[auth.Prin, ObjectId]] = []

    async def owns(delegator: auth.Prin, oid: ObjectId) -> object:
        await trio.lowlevel.checkpoint()
        asked.append((delegator, oid))
        return answer

    with trio.fail_after(30):
        served = await serve(nursery, net, v1, owns=owns)
        with pytest.raises(DisclosureRefusedError) as caught:
            await request_disclosure(
                served.address,
                thief.identity,
                net.directive(thief, by=thief),
                [KEY],
                revocations=net.crl,
                server=v1.principal,
            )
    assert "does not own" in caught.value.reason
    assert asked == [(thief.principal, KEY)]
    assert served.kinds() == ["disclosure_refused"]


@pytest.mark.parametrize("answer", [1, "yes", [True]])
async def test_a_sync_owns_that_answers_a_truthy_non_bool_releases_nothing(
    net: Net, nursery: trio.Nursery, answer: object
) -> None:
    v1, thief = net.program("v1"), net.program("thief")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1, owns=lambda who, oid: answer)
        with pytest.raises(DisclosureRefusedError):
            await request_disclosure(
                served.address,
                thief.identity,
                net.directive(thief, by=thief),
                [KEY],
                revocations=net.crl,
                server=v1.principal,
            )
    assert served.kinds() == ["disclosure_refused"]


async def test_an_async_owns_that_says_yes_releases(net: Net, nursery: trio.Nursery) -> None:
    v1, v2, owner = net.program("v1"), net.program("v2"), net.program("owner")

    async def owns(delegator: auth.Prin, oid: ObjectId) -> bool:
        await trio.lowlevel.checkpoint()
        return delegator == owner.principal and oid == KEY

    with trio.fail_after(30):
        served = await serve(nursery, net, v1, owns=owns)
        got = await request_disclosure(
            served.address,
            v2.identity,
            net.directive(v2, by=owner),
            [KEY],
            revocations=net.crl,
            server=v1.principal,
        )
    assert got == {KEY: served.keys[KEY]}
