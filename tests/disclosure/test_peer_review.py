"""The disclosure peer against review A5's findings, each attack made as an attacker
would make it over real Tao channels on 127.0.0.1 (the fixtures of test_peer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import AuthenticationError, auth
from taonet.disclosure.peer import (
    ANY_SERVER,
    DisclosureRefusedError,
    fetch_and_seal,
    request_disclosure,
)
from taonet.protected import ObjectId
from tests.disclosure.test_peer import KEY, Net, Program, Served, net, nursery, serve

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


# -- finding 3: the requester names the server it expects ----------------------------------


async def rogue_serving(nursery: trio.Nursery, net: Net, rogue: Program) -> Served:
    """A program of the domain at an address version 2 was given (a squatter on v1's
    port, a stale configuration), serving its own key under the id version 2 asks for."""
    return await serve(nursery, net, rogue)


async def test_a_rogue_program_at_the_address_is_refused_when_the_server_is_named(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2, rogue = net.program("v1"), net.program("v2"), net.program("rogue")
    path = tmp_path / "keys.sealed"
    with trio.fail_after(30):
        served = await rogue_serving(nursery, net, rogue)
        # The rogue accepts the real policy directive: it is for v2, on v2's channel.
        with pytest.raises(AuthenticationError, match=r"the disclosure peer at .* is "):
            await request_disclosure(
                served.address, v2.identity, net.directive(v2), [KEY],
                revocations=net.crl, server=v1.principal,
            )  # fmt: skip
        with pytest.raises(AuthenticationError):
            await fetch_and_seal(
                served.address, v2.identity, net.directive(v2), [KEY],
                tao=v2.tao, path=path, revocations=net.crl, server=v1.principal,
            )  # fmt: skip
    assert not path.exists()
    assert served.audited == []  # the request never reached the rogue


async def test_the_server_must_be_named_or_any_server_given_explicitly(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v2, rogue = net.program("v2"), net.program("rogue")
    request: Any = request_disclosure  # called as an untyped caller would
    fetch: Any = fetch_and_seal
    with trio.fail_after(30):
        served = await rogue_serving(nursery, net, rogue)
        args = (served.address, v2.identity, net.directive(v2), [KEY])
        with pytest.raises(TypeError, match="server"):
            await request(*args, revocations=net.crl)  # the old default
        for wrong in (None, str(rogue.principal)):
            with pytest.raises(TypeError, match="server= must be"):
                await request(*args, revocations=net.crl, server=wrong)
            with pytest.raises(TypeError, match="server= must be"):
                await fetch(
                    *args, tao=v2.tao, path=tmp_path / "k", revocations=net.crl, server=wrong
                )
        with pytest.raises(TypeError, match="server"):
            await fetch(*args, tao=v2.tao, path=tmp_path / "k", revocations=net.crl)
        assert served.audited == []  # nothing was asked
        # The opt-out is explicit, and takes whatever key the program there holds.
        got = await request_disclosure(*args, revocations=net.crl, server=ANY_SERVER)
    assert got == {KEY: served.keys[KEY]}
    assert not (tmp_path / "k").exists()
