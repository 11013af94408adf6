"""``taonet demo --upgrade``: an upgrade that keeps its data, and rotation across versions.

* The real command, twice in one directory, in a real process: each step's line, the
  refusals (version 2 cannot unseal version 1's keys nor read the key without a
  directive; version 1 cannot read the new epoch, nor open the record with its key),
  and the rerun (identities unsealed, new epochs: no id made twice).
* The data: the record is on disk only encrypted; version 2's sealed keys open the
  record under the new epoch, version 1's no longer do, and neither unseals the other's.
* Attacks on the demo's real programs (TLS on 127.0.0.1), made as an attacker would:
  version 2 presents, over its own channel, a directive the policy key made for
  another principal (version 1 itself, or a third program of the domain) to version
  1's disclosure peer and to the secret server: both refuse, nothing is released or
  written, while version 2's own directive is honoured by both; version 1 replays
  version 2's directive after its grant was taken back: both refuse; a directive
  version 1 signed as the owner of ``/upgrade`` opens the secret server only while
  version 1 holds Own (checked when it is used, not when it was signed).
* The command's failures are one line: a directory made for other programs (the
  plain demo's, or an older version of this one), a directory that cannot be, and
  ``--upgrade`` with ``--hosted`` (a usage error).
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from taonet import HostError, auth
from taonet.crypto import KdfParams
from taonet.disclosure import DirectiveOp, sign_directive
from taonet.disclosure.peer import (
    DisclosureCode,
    DisclosureRefusedError,
    fetch_and_seal,
    request_disclosure,
)
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.protected import ObjectId, SecretObject, WrongKeyError
from taonet.secrets import GrantRequest, UnauthorizedError
from taonet_examples.simpleexample import simpleclient, upgrade_v1, upgrade_v2
from taonet_examples.simpleexample.upgrade import (
    V1_OPS,
    V2_OPS,
    UpgradeWorld,
    as_operator,
    run_upgrade_demo,
    sign_upgrade_directive,
    upgrade_world,
)
from taonet_examples.simpleexample.upgrade_record import (
    CONTENT_KEY,
    PREFIX,
    RECORD_FILE,
    open_keys,
    read_record,
    record_protector,
)
from taonet_services.secret_server import PROGRAM_FILE
from tests.cli.cli_helpers import isolated, one_line_error, run

HOUR = 3600 * 10**9
TEXT = upgrade_v1.RECORD_TEXT.decode()


def _quiet(_: str) -> None:
    """Say nothing (the lines are another test's)."""


def _taonet_demo_upgrade(directory: Path) -> list[str]:
    """``taonet demo --upgrade --dir DIRECTORY`` in a real process: its lines."""
    result = subprocess.run(
        [sys.executable, "-m", "taonet", "demo", "--upgrade", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout.splitlines()


def _files_holding(base: Path, needle: bytes) -> list[Path]:
    """The files under ``base`` that hold ``needle``."""
    return [p for p in base.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _in_order(lines: list[str], *needles: str) -> list[str]:
    """The first line holding each needle, each found after the one before."""
    found: list[str] = []
    at = 0
    for needle in needles:
        index = next((i for i in range(at, len(lines)) if needle in lines[i]), None)
        assert index is not None, f"no line with {needle!r} after line {at}:\n" + "\n".join(lines)
        found.append(lines[index])
        at = index + 1
    return found


@pytest.mark.slow
def test_taonet_demo_upgrade_runs_and_reruns(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    # The first run makes epoch 1 and rotates to 2; the rerun makes 3 and rotates to 4.
    for round_, (first, second) in enumerate(((1, 2), (3, 4)), start=1):
        lines = _taonet_demo_upgrade(directory)
        old, new = f"{CONTENT_KEY}#{first}", f"{CONTENT_KEY}#{second}"
        found = _in_order(
            lines,
            "[v1] program name: ",
            "[v2] program name: ",
            "[operator] taonet secret grant V1 --ops Create,Read,Own --name /upgrade",
            f"[v1] made the content key {old}",
            f"[v1] wrote the record, AES-256-GCM under {old}",
            "[v2] unsealing v1-keys.sealed: refused: HostError: sealed data is bound to another",
            f"[v2] reading {old} from the secret server: refused: UnauthorizedError",
            f"[operator] taonet domain directive --op Read --to V2 --object {CONTENT_KEY}:{first}",
            f"says Read(V2, {old})",
            f"[v1] released {old} to the channel's peer ",
            f"[v2] got {old} from ",
            f"[v2] read the record: {TEXT!r}",
            f"[v2] read {old} from the secret server with the directive",
            f"[v2] read the record: {TEXT!r}",
            "[operator] taonet secret grant V1 --ops Create,Read,Own --name /upgrade --revoke",
            "[operator] taonet secret grant V2 --ops Read,Own --name /upgrade",
            f"[v2] rotated {CONTENT_KEY} in the secret server: epoch {second} (Own)",
            f"[v2] protected the record anew under {new}",
            f"[v2] read the record under {new}: {TEXT!r}",
            f"[v1] reading {new} from the secret server: refused: UnauthorizedError",
            f"[v1] its own {old} does not open the record",
            "== Done",
        )
        v1 = found[0].split("program name: ", 1)[1]
        v2 = found[1].split("program name: ", 1)[1]
        assert v1 != v2  # other code, other names
        policy = found[8].split("[operator] signed: ", 1)[1].split(" says ", 1)[0]
        # Version 1 released the key to the channel's verified peer (version 2), on
        # the policy key's word; version 2 checked it spoke to version 1.
        assert found[9].endswith(f"to the channel's peer {v2} (directive by {policy})")
        assert found[10] == f"[v2] got {old} from {v1} over a Tao channel"
        identities = [line for line in lines if "key and certificate" in line]
        assert len(identities) == 3  # the secret server, version 1, version 2
        if round_ == 1:  # each program provisioned, then sealed its identity
            assert all("] sealed key and certificate to " in line for line in identities)
        else:  # the rerun unseals them, and makes a new epoch: no id made twice
            assert all("] unsealed key and certificate " in line for line in identities)
            assert found[3].endswith("a new epoch of the name an earlier run left")
            # Version 2's grant from the first run is taken back before version 1 starts.
            _in_order(
                lines,
                "[operator] taonet secret grant V2 --ops Read,Own --name /upgrade --revoke",
                "[operator] taonet secret grant V1 --ops Create,Read,Own --name /upgrade",
                "[v1] made the content key",
            )


async def test_the_record_is_kept_encrypted_and_follows_the_key(tmp_path: Path) -> None:
    lines: list[str] = []
    with trio.fail_after(120):
        text = await run_upgrade_demo(tmp_path, say=lines.append, kdf=KdfParams.for_tests())
    assert text == upgrade_v1.RECORD_TEXT
    assert _files_holding(tmp_path, text) == []  # the record is nowhere in the clear
    data = tmp_path / "data"
    with trio.fail_after(120):
        async with upgrade_world(tmp_path, say=_quiet, fresh_data=False) as world:
            v1, v2 = world.v1, world.v2
            record = data / RECORD_FILE
            assert record_protector(record) == ObjectId(CONTENT_KEY, 2)
            v2_keys = await open_keys(v2.tao, data / upgrade_v2.KEYS_FILE)
            assert sorted(v2_keys) == [ObjectId(CONTENT_KEY, 1), ObjectId(CONTENT_KEY, 2)]
            assert read_record(record, v2_keys[ObjectId(CONTENT_KEY, 2)]) == text
            # Version 1's key is epoch 1 only: it no longer opens the record.
            v1_keys = await open_keys(v1.tao, data / upgrade_v1.KEYS_FILE)
            assert list(v1_keys) == [ObjectId(CONTENT_KEY, 1)]
            with pytest.raises(WrongKeyError):
                read_record(record, v1_keys[ObjectId(CONTENT_KEY, 1)])
            # Neither version unseals the other's keys.
            with pytest.raises(HostError, match="another principal"):
                await open_keys(v1.tao, data / upgrade_v2.KEYS_FILE)
            with pytest.raises(HostError, match="another principal"):
                await open_keys(v2.tao, data / upgrade_v1.KEYS_FILE)
            # The epoch-1 key version 2 got from version 1 is the secret server's.
            async with world.store(v2) as store:
                served = await store.read(CONTENT_KEY, 1)
            assert served.value == v2_keys[ObjectId(CONTENT_KEY, 1)].value


@contextlib.asynccontextmanager
async def _version_1_serving(
    tmp_path: Path, told: list[str]
) -> AsyncIterator[tuple[UpgradeWorld, SecretObject, tuple[str, int]]]:
    """The demo's world with version 1 granted its rights, its record kept, and its
    disclosure peer serving (``told`` gets its release and refusal lines)."""
    async with upgrade_world(tmp_path, say=_quiet, kdf=KdfParams.for_tests()) as world:
        v1 = world.v1
        await as_operator(world, [GrantRequest(str(v1.principal), V1_OPS, PREFIX)])
        async with world.store(v1) as store:
            key = await upgrade_v1.keep_record(v1.tao, store, world.data, say=_quiet)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(
                    upgrade_v1.serve_keys,
                    v1.tao,
                    v1.identity,
                    world.data,
                    revocations=v1.crl,
                    say=told.append,
                )
            )
            yield world, key, ("127.0.0.1", port)
            nursery.cancel_scope.cancel()


async def _policy_directive(world: UpgradeWorld, delegate: auth.Prin, key: ObjectId) -> bytes:
    """A genuine directive of the policy key: ``delegate`` may Read ``key``."""
    now = time.time_ns()
    return sign_directive(
        await world.policy.signer(),
        op=DirectiveOp.READ,
        delegate=delegate,
        object_id=key,
        not_before=now - HOUR,
        not_after=now + HOUR,
    )


def _no_files_but(data: Path, *names: str) -> Callable[[], None]:
    def check() -> None:
        assert sorted(p.name for p in data.iterdir()) == sorted(names)

    return check


async def test_version_2_with_a_directive_for_another_principal_gets_nothing(
    tmp_path: Path,
) -> None:
    told: list[str] = []
    with trio.fail_after(120):
        async with _version_1_serving(tmp_path, told) as (world, key, peer):
            v1, v2 = world.v1, world.v2
            third = world.services.secret_server_principal  # another program of the domain
            foreign = [
                await _policy_directive(world, v1.principal, key.id),
                await _policy_directive(world, third, key.id),
            ]
            only_v1_files = _no_files_but(world.data, upgrade_v1.KEYS_FILE, RECORD_FILE)
            for directive in foreign:
                with pytest.raises(DisclosureRefusedError) as refused:
                    await fetch_and_seal(
                        peer,
                        v2.identity,
                        directive,
                        [key.id],
                        tao=v2.tao,
                        path=world.data / upgrade_v2.KEYS_FILE,
                        revocations=v2.crl,
                        server=v1.principal,
                    )
                assert refused.value.code is DisclosureCode.UNAUTHORIZED
                assert "not for this channel's peer" in refused.value.reason
                only_v1_files()  # nothing written, not even a temp file
            async with world.store(v2) as store:
                for directive in foreign:
                    with pytest.raises(UnauthorizedError, match=r"not Read on .* to the caller"):
                        await store.read(key.id.name, key.id.epoch, directive=directive)
                # Its own directive, over the same channel and to the same peer: honoured
                # (so the refusals above are for the principal, and nothing else).
                own = await sign_upgrade_directive(world, key.id)
                assert (await store.read(key.id.name, key.id.epoch, directive=own)) == key
            text = await upgrade_v2.fetch_from_peer(
                v2.tao,
                v2.identity,
                world.data,
                peer=peer,
                peer_principal=v1.principal,
                directive=own,
                key=key.id,
                revocations=v2.crl,
                say=_quiet,
            )
            assert text == upgrade_v1.RECORD_TEXT
    refusals = [line for line in told if line.startswith("refused ")]
    assert len(refusals) == 2
    for line, who in zip(refusals, (v1.principal, third), strict=True):
        assert line.startswith(f"refused {v2.principal}: the directive is for {who}, not for")
    assert [line for line in told if line.startswith("released ")] == [
        f"released {key.id} to the channel's peer {v2.principal}"
        f" (directive by {world.domain.policy_principal})"
    ]


async def test_version_1_replaying_version_2s_directive_gets_nothing(tmp_path: Path) -> None:
    told: list[str] = []
    with trio.fail_after(120):
        async with _version_1_serving(tmp_path, told) as (world, key, peer):
            v1, v2 = world.v1, world.v2
            stolen = await sign_upgrade_directive(world, key.id)  # version 2's
            # The upgrade done: version 1's grant taken back, version 2's given.
            await as_operator(
                world,
                [
                    GrantRequest(str(v1.principal), V1_OPS, PREFIX, revoke=True),
                    GrantRequest(str(v2.principal), V2_OPS, PREFIX),
                ],
            )
            async with world.store(v1) as store:
                with pytest.raises(UnauthorizedError, match=r"not Read on .* to the caller"):
                    await store.read(key.id.name, key.id.epoch, directive=stolen)
                with pytest.raises(UnauthorizedError):  # nor without it, any more
                    await store.read(key.id.name, key.id.epoch)
            # Over its own channel to a disclosure peer (here, itself): refused.
            with pytest.raises(DisclosureRefusedError, match="not for this channel's peer"):
                await fetch_and_seal(
                    peer,
                    v1.identity,
                    stolen,
                    [key.id],
                    tao=v1.tao,
                    path=world.data / "stolen.sealed",
                    revocations=v1.crl,
                    server=v1.principal,
                )
            assert not (world.data / "stolen.sealed").exists()
    assert [line for line in told if line.startswith("released ")] == []
    assert len([line for line in told if line.startswith(f"refused {v1.principal}:")]) == 1


def _domain_of_other_programs(base: Path) -> None:
    """``base`` as the plain demo (or an older version of this one) left it: a domain
    whose guard lets other programs run."""
    password = b"other versions"
    (base / "demo-password").write_bytes(password + b"\n")
    kdf = KdfParams.for_tests()
    Domain.create(
        base / "domain",
        DomainTemplate(name="simpleexample", programs=(PROGRAM_FILE, Path(simpleclient.__file__))),
        password,
        kdf=kdf,
    )
    SoftHost.create(base / "host", password, kdf=kdf)


async def test_a_directory_made_for_other_programs_is_one_line(tmp_path: Path) -> None:
    _domain_of_other_programs(tmp_path)
    result = await run(isolated("demo", "--upgrade", "--dir", str(tmp_path)))
    one_line_error(
        result,
        f"the domain in {tmp_path} was made for other versions of the programs (version 1,"
        " upgrade_v1.py, is not allowed to run)",
    )
    assert not (tmp_path / "data").exists()  # nothing started


@pytest.mark.parametrize("where", ["/proc/taonet-demo", "/proc/self/taonet-demo"])
async def test_upgrade_demo_in_a_directory_that_cannot_be(where: str) -> None:
    result = await run(isolated("demo", "--upgrade", "--dir", where))
    one_line_error(result, f"cannot use {where} as the demo directory")


async def test_upgrade_and_hosted_are_one_or_the_other() -> None:
    result = await run(isolated("demo", "--upgrade", "--hosted"))
    assert result.returncode == 2, result
    assert "not allowed with argument" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_directive_version_1_signs_as_owner_holds_only_while_it_owns(
    tmp_path: Path,
) -> None:
    told: list[str] = []
    with trio.fail_after(120):
        async with _version_1_serving(tmp_path, told) as (world, key, peer):
            v1, v2 = world.v1, world.v2
            assert v1.identity.signer is not None
            assert v1.identity.certificate is not None
            now = time.time_ns()
            by_owner = sign_directive(
                v1.identity.signer,
                op=DirectiveOp.READ,
                delegate=v2.principal,
                object_id=key.id,
                not_before=now - HOUR,
                not_after=now + HOUR,
                cert=v1.identity.certificate.der,
            )
            # Version 1 holds Own on /upgrade (the operator's grant): both honour it.
            async with world.store(v2) as store:
                assert (await store.read(key.id.name, key.id.epoch, directive=by_owner)) == key
            got = await request_disclosure(
                peer, v2.identity, by_owner, [key.id], server=v1.principal
            )
            assert got == {key.id: key}
            # The upgrade done, version 1 owns nothing: the same directive, replayed by
            # version 2, no longer opens the secret server.
            await as_operator(world, [GrantRequest(str(v1.principal), V1_OPS, PREFIX, revoke=True)])
            async with world.store(v2) as store:
                with pytest.raises(UnauthorizedError, match="does not hold Own on /upgrade"):
                    await store.read(key.id.name, key.id.epoch, directive=by_owner)
    assert [line for line in told if line.startswith("released ")] == [
        f"released {key.id} to the channel's peer {v2.principal} (directive by {v1.principal})"
    ]
