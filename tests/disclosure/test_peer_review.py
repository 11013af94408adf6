"""The disclosure peer against review A5's findings, each attack made as an attacker
would make it over real Tao channels on 127.0.0.1 (the fixtures of test_peer)."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

import taonet.disclosure._peer as peer_module
from taonet import AuthenticationError, HostError, ProtocolError, TaoError, auth
from taonet.disclosure import Directive, decode_directive, verify_directive
from taonet.disclosure._schema import parse, serialize
from taonet.disclosure.peer import (
    ANY_SERVER,
    DisclosureRefusedError,
    fetch_and_seal,
    open_sealed,
    request_disclosure,
    serve_disclosure,
)
from taonet.protected import ObjectId
from tests.disclosure import directive_helpers as h
from tests.disclosure.test_peer import (
    KEY,
    Net,
    Program,
    Served,
    key_object,
    leftovers,
    net,
    nursery,
    serve,
)

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
    out = tmp_path / "out"
    out.mkdir()
    path = out / "keys.sealed"
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


# -- finding 2: what one request can make the server verify --------------------------------


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every directive the serving peer checks the signature of, in order."""
    checked: list[bytes] = []
    real = verify_directive

    def counting(raw: bytes, **options: Any) -> Directive:
        checked.append(raw)
        return real(raw, **options)

    monkeypatch.setattr(peer_module, "verify_directive", counting)
    return checked


def bad_signature(raw: bytes) -> bytes:
    """``raw`` with the last byte of its ECDSA value changed (still canonical protobuf)."""
    msg = parse("directive_message", raw, limit=1 << 20, what="directive")
    msg.signature = msg.signature[:-1] + bytes([msg.signature[-1] ^ 1])
    return serialize(msg)


async def test_a_thousand_directives_for_one_id_are_refused_unverified(
    net: Net, nursery: trio.Nursery, verified: list[bytes]
) -> None:
    """The reviewer's attack: any program signs Read(itself, X) for 999 ids it never
    asks for and sends them with one directive for the id it asks. Each used to be
    ECDSA-verified on the server's event loop before the ids were looked at."""
    v1, anyone = net.program("v1"), net.program("anyone")
    junk = [net.directive(anyone, ObjectId(f"/junk/{i}", 1), by=anyone) for i in range(999)]
    with trio.fail_after(60):
        served = await serve(nursery, net, v1)
        with pytest.raises(DisclosureRefusedError, match="1000 directives for 1 ids"):
            await request_disclosure(
                served.address, anyone.identity, [net.directive(anyone, by=anyone), *junk],
                [KEY], revocations=net.crl, server=v1.principal,
            )  # fmt: skip
    assert verified == []
    assert served.kinds() == ["disclosure_refused"]


@pytest.mark.parametrize("case", ["two for one id", "one for an id not asked"])
async def test_directives_that_do_not_match_the_ids_one_to_one_are_refused_unverified(
    net: Net, nursery: trio.Nursery, verified: list[bytes], case: str
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    other = ObjectId("/app/other-key", 1)
    second = net.directive(v2) if case == "two for one id" else net.directive(v2, other)
    with trio.fail_after(30):
        served = await serve(nursery, net, v1, [KEY, ObjectId("/app/third", 1)])
        with pytest.raises(DisclosureRefusedError, match=r"two directives|not asked for"):
            await request_disclosure(
                served.address, v2.identity, [net.directive(v2), second],
                [KEY, ObjectId("/app/third", 1)], revocations=net.crl, server=v1.principal,
            )  # fmt: skip
    assert verified == []


async def test_a_thousand_self_signed_directives_for_a_thousand_ids_are_refused_unverified(
    net: Net, nursery: trio.Nursery, verified: list[bytes]
) -> None:
    """One directive per id, each signed by a program that owns none of them."""
    v1, anyone = net.program("v1"), net.program("anyone")
    ids = [ObjectId(f"/junk/{i}", 1) for i in range(1000)]
    directives = [net.directive(anyone, oid, by=anyone) for oid in ids]
    with trio.fail_after(60):
        served = await serve(nursery, net, v1)
        with pytest.raises(DisclosureRefusedError, match="does not own"):
            await request_disclosure(
                served.address, anyone.identity, directives, ids,
                revocations=net.crl, server=v1.principal,
            )  # fmt: skip
    assert verified == []


async def test_forged_policy_directives_stop_at_the_first_bad_signature(
    net: Net, nursery: trio.Nursery, verified: list[bytes]
) -> None:
    """Directives that claim the policy key (so pass every check before the
    signature) with signatures that do not verify: one is checked, then refused."""
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/key/{i}", 1) for i in range(100)]
    forged = [bad_signature(net.directive(v2, oid)) for oid in ids]
    with trio.fail_after(60):
        served = await serve(nursery, net, v1, ids)
        with pytest.raises(DisclosureRefusedError, match="signature"):
            await request_disclosure(
                served.address, v2.identity, forged, ids, revocations=net.crl, server=v1.principal
            )
    assert verified == forged[:1]


async def test_the_server_lets_other_tasks_run_while_it_verifies(
    net: Net, nursery: trio.Nursery, verified: list[bytes]
) -> None:
    """A granted request of 64 ids: 64 signatures, with a checkpoint every few, so that
    a task of the same event loop (another connection) runs between them (at most two
    batches in a row: Trio may run the verifying task first in the next batch)."""
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/key/{i}", 1) for i in range(64)]
    ticks = 0
    seen: list[int] = []  # the ticks count at each verification

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    real = verify_directive

    def watching(raw: bytes, **options: Any) -> Directive:
        seen.append(ticks)
        return real(raw, **options)

    with trio.fail_after(60):
        served = await serve(nursery, net, v1, ids)
        directives = [net.directive(v2, oid) for oid in ids]
        async with trio.open_nursery() as inner:
            inner.start_soon(other_task)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(peer_module, "verify_directive", watching)
                got = await request_disclosure(
                    served.address, v2.identity, directives, ids,
                    revocations=net.crl, server=v1.principal,
                )  # fmt: skip
            inner.cancel_scope.cancel()
    assert got == served.keys
    assert len(seen) == len(ids)
    # The longest run of verifications with no other task run in between.
    runs, run = [], 1
    for before, after in itertools.pairwise(seen):
        run = run + 1 if after == before else 1
        runs.append(run)
    batch = peer_module._VERIFY_BATCH
    assert batch <= 8
    assert max(runs) <= 2 * batch, f"{max(runs)} verifications without another task run"


# -- finding 4: every released id is on record ---------------------------------------------


def released_ids(audited: list[dict[str, Any]]) -> list[str]:
    """The ids the release entries name, in order, after checking the parts hang
    together (one release token, parts 1/n..n/n in order, each within the bound)."""
    entries = [a for a in audited if a["kind"] == "disclosure_released"]
    assert len({a["details"]["release"] for a in entries}) == 1
    assert [a["details"]["part"] for a in entries] == [
        f"{n}/{len(entries)}" for n in range(1, len(entries) + 1)
    ]
    assert all(len(a["subject"]) <= peer_module.AUDIT_IDS_CHARS for a in entries)
    return [text for a in entries for text in a["subject"].split(",")]


@pytest.mark.parametrize(("count", "name_chars"), [(100, 30), (1000, 200), (7, 1000)])
async def test_every_released_id_is_on_record(
    net: Net, nursery: trio.Nursery, count: int, name_chars: int
) -> None:
    """A release of many keys was audited with its ids cut at 1000 characters: for 100
    keys of 30-character names, 70 ids were on no record."""
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/{'k' * (name_chars - 10)}/{i:04d}", 1) for i in range(count)]
    with trio.fail_after(60):
        served = await serve(nursery, net, v1, ids)
        got = await request_disclosure(
            served.address, v2.identity, [net.directive(v2, i) for i in ids], ids,
            revocations=net.crl, server=v1.principal,
        )  # fmt: skip
    assert got == served.keys
    assert released_ids(served.audited) == [str(i) for i in ids]
    assert {a["details"]["count"] for a in served.audited} == {str(count)}


async def test_a_release_whose_last_part_cannot_be_recorded_is_not_made(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/{'k' * 190}/{i:04d}", 1) for i in range(100)]
    recorded: list[dict[str, Any]] = []

    async def audit(**fields: Any) -> None:
        if fields["kind"] == "disclosure_released" and is_last(fields["details"]["part"]):
            raise TaoError("the audit is full")
        recorded.append(fields)

    objects = {oid: key_object(oid) for oid in ids}
    with trio.fail_after(60):
        listeners = await nursery.start(
            functools.partial(
                serve_disclosure, objects, 0, v1.identity, revocations=net.crl, audit=audit
            )
        )
        address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        with pytest.raises(DisclosureRefusedError, match="could not be audited"):
            await request_disclosure(
                address, v2.identity, [net.directive(v2, i) for i in ids], ids,
                revocations=net.crl, server=v1.principal,
            )  # fmt: skip
    parts = [a["details"]["part"] for a in recorded]
    assert len(parts) >= 2  # the ones before the last were recorded, then it failed
    assert not any(map(is_last, parts))
    assert recorded[-1]["kind"] == "disclosure_released"  # no refusal: the audit failed


def is_last(part: str) -> bool:
    number, _, total = part.partition("/")
    return number == total


# -- finding 5: a second batch keeps the first ---------------------------------------------


async def test_fetch_and_seal_twice_keeps_the_first_batch(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """MAX_FETCH forces batches; a second fetch_and_seal to the same path replaced the
    first batch's keys (version 1 may be gone by then)."""
    v1, v2 = net.program("v1"), net.program("v2")
    a, b, c = ObjectId("/app/a", 1), ObjectId("/app/b", 1), ObjectId("/app/c", 1)
    out = tmp_path / "out"
    out.mkdir()
    path = out / "keys.sealed"
    with trio.fail_after(30):
        served = await serve(nursery, net, v1, (a, b, c))
        for batch in ([a], [b, c], [a]):  # a again, same value: kept once
            got = await fetch_and_seal(
                served.address, v2.identity, [net.directive(v2, i) for i in batch], batch,
                tao=v2.tao, path=path, revocations=net.crl, server=v1.principal,
            )  # fmt: skip
            assert set(got) == set(batch)
        assert await open_sealed(v2.tao, path) == served.keys
        # replace=True: only what this call got.
        await fetch_and_seal(
            served.address, v2.identity, net.directive(v2, c), [c],
            tao=v2.tao, path=path, revocations=net.crl, server=v1.principal, replace=True,
        )  # fmt: skip
        assert await open_sealed(v2.tao, path) == {c: served.keys[c]}
    assert leftovers(out) == ["keys.sealed"]


async def test_another_value_for_a_sealed_id_is_refused_and_nothing_written(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A second peer (here a later v1 that holds another key under the same id) answers
    an id already sealed with another value: the caller learns of it, the file stays."""
    v1, v1b, v2 = net.program("v1"), net.program("v1 again"), net.program("v2")
    out = tmp_path / "out"
    out.mkdir()
    path = out / "keys.sealed"
    with trio.fail_after(30):
        first = await serve(nursery, net, v1)
        second = await serve(nursery, net, v1b)
        assert first.keys[KEY].value != second.keys[KEY].value
        await fetch_and_seal(
            first.address, v2.identity, net.directive(v2), [KEY],
            tao=v2.tao, path=path, revocations=net.crl, server=v1.principal,
        )  # fmt: skip
        before = path.read_bytes()
        with pytest.raises(ProtocolError, match="another value than the one sealed"):
            await fetch_and_seal(
                second.address, v2.identity, net.directive(v2), [KEY],
                tao=v2.tao, path=path, revocations=net.crl, server=v1b.principal,
            )  # fmt: skip
        assert path.read_bytes() == before
        assert await open_sealed(v2.tao, path) == first.keys
    assert leftovers(out) == ["keys.sealed"]


async def test_a_file_that_does_not_open_is_left_and_nothing_is_fetched(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    out = tmp_path / "out"
    out.mkdir()
    path = out / "keys.sealed"
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        # v1's own sealed file at the path v2 was given: v2 cannot open it.
        path.write_bytes(await v1.tao.seal(b"v1's", "self"))
        before = path.read_bytes()
        with pytest.raises(HostError):
            await fetch_and_seal(
                served.address, v2.identity, net.directive(v2), [KEY],
                tao=v2.tao, path=path, revocations=net.crl, server=v1.principal,
            )  # fmt: skip
        assert path.read_bytes() == before
        assert served.audited == []  # nothing was asked of the peer
    assert leftovers(out) == ["keys.sealed"]


async def test_concurrent_batches_to_one_file_are_all_kept(
    net: Net, nursery: trio.Nursery, tmp_path: Path
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    ids = [ObjectId(f"/app/key/{i}", 1) for i in range(6)]
    out = tmp_path / "out"
    out.mkdir()
    path = out / "keys.sealed"
    with trio.fail_after(30):
        served = await serve(nursery, net, v1, ids)
        async with trio.open_nursery() as batches:
            for oid in ids:
                batches.start_soon(
                    functools.partial(
                        fetch_and_seal,
                        served.address,
                        v2.identity,
                        net.directive(v2, oid),
                        [oid],
                        tao=v2.tao,
                        path=path,
                        revocations=net.crl,
                        server=v1.principal,
                    )
                )
        assert await open_sealed(v2.tao, path) == served.keys


# -- finding 6: one directive, one name in the audit ---------------------------------------

_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256's order


def high_s(raw: bytes) -> bytes:
    """The same directive with its ECDSA signature (r, s) written as (r, n - s): what
    anyone holding it can do; it still verifies."""
    msg = parse("directive_message", raw, limit=1 << 20, what="directive")
    r, s = decode_dss_signature(h.ecdsa_value(msg.signature))
    msg.signature = h.field(1, h.signed_data_header()) + h.field(2, encode_dss_signature(r, _N - s))
    return serialize(msg)


def with_policy_cert(raw: bytes, net: Net) -> bytes:
    """The same policy-signed directive with the (unsigned) policy certificate attached."""
    msg = parse("directive_message", raw, limit=1 << 20, what="directive")
    msg.cert = net.domain.policy_cert
    return serialize(msg)


async def test_other_bytes_of_one_directive_are_audited_under_one_name(
    net: Net, nursery: trio.Nursery
) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    raw = net.directive(v2)
    forms = [raw, high_s(raw), with_policy_cert(raw, net), with_policy_cert(high_s(raw), net)]
    assert len(set(forms)) == 4
    other = net.directive(v2)  # another signing of the same grant: another directive
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        for form in [*forms, other]:
            got = await request_disclosure(
                served.address, v2.identity, form, [KEY], revocations=net.crl, server=v1.principal
            )
            assert got == {KEY: served.keys[KEY]}
        names = [a["details"]["directive"] for a in served.audited]
    assert names[:4] == [decode_directive(raw).digest] * 4
    assert names[4] == decode_directive(other).digest != names[0]


# -- finding 9: an end in 2262 is no end ---------------------------------------------------


async def test_a_directive_that_ends_in_2262_is_refused(net: Net, nursery: trio.Nursery) -> None:
    v1, v2 = net.program("v1"), net.program("v2")
    with trio.fail_after(30):
        served = await serve(nursery, net, v1)
        forever = net.directive(v2, not_after=2**63 - 1)
        with pytest.raises(DisclosureRefusedError, match="like one without end"):
            await request_disclosure(
                served.address, v2.identity, forever, [KEY], revocations=net.crl,
                server=v1.principal,
            )  # fmt: skip
    assert served.kinds() == ["disclosure_refused"]
