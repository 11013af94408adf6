"""A conformance suite for Tao backends: :func:`check_tao`.

In the spirit of :func:`trio.testing.check_two_way_stream`: a backend's tests give
:func:`check_tao` factories for fresh :class:`~taonet.hosts.Tao` objects and it checks
the whole interface against them, as a hosted program would use it:

* names: :meth:`~taonet.hosts.Tao.get_tao_name` is stable and
  :meth:`~taonet.hosts.Tao.extend_tao_name` makes it grow, for later calls too;
* random bytes: the sizes asked for, distinct draws, all byte values in a large draw,
  sizes out of bounds refused;
* shared secrets: the same for the same name and policy (also from a fresh Tao of the
  same program), different across policies and programs, except "any", which every
  program on the host shares;
* sealing under each policy: a round trip, plaintext not visible, another program (or
  an extension of the name) refused for "self" and "few" and let in for "any", every
  flipped byte, truncation, extension and garbage refused, the size limit enforced;
* attestations: they validate with :func:`taonet.attestation.validate` (under the
  given policy certificate), the speaker is the Tao's name (or the issuer asked for, a
  sub-principal of it), times are as asked, other issuers and times out of range
  refused;
* arguments of the wrong type: TypeError or HostError, never another exception;
* concurrent calls on one Tao;
* counters and rollback-protected sealing when the backend says it has them (only
  increasing, per program, an older blob refused, a refused seal moves no counter),
  or :class:`~taonet.NotSupportedError` from all four methods when it says it has not.

Every refusal must be a :class:`~taonet.HostError` (the interface's one error for a
request the host will not serve; a subclass passes), and a Tao must keep working
after refusing. A failed check raises :class:`AssertionError`
naming the check. Counter labels are unique per run, so the suite can run again
against the same host.

For tests only: nothing here belongs in a program.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Final

import trio

from taonet import auth
from taonet._errors import AuthenticationError, HostError, NotSupportedError
from taonet.attestation import DEFAULT_VALIDITY_NS, Attestation, Unrooted, validate
from taonet.certs import PolicyAnchor
from taonet.hosts._tao import (
    MAX_COUNTER,
    MAX_LABEL_BYTES,
    MAX_RANDOM_BYTES,
    MAX_SEALED_BYTES,
    SEAL_POLICIES,
    SEAL_POLICY_ANY,
    SEAL_POLICY_FEW,
    SEAL_POLICY_SELF,
    Tao,
)

__all__ = ["TaoFactory", "check_tao"]

#: Makes a fresh :class:`~taonet.hosts.Tao`, open for the ``async with`` block.
TaoFactory = Callable[[], AbstractAsyncContextManager[Tao]]

_DATA: Final = b"check_tao: sealed data \x00\x01\xfe\xff"
_MESSAGE: Final = auth.Pred("CheckTao", (auth.Str("attest"), auth.Int(7)))
_EXT1: Final = auth.SubPrin((auth.PrinExt("CheckTao", (auth.Int(1),)),))
_EXT2: Final = auth.SubPrin((auth.PrinExt("CheckTaoAgain", (auth.Str("two"),)),))
#: How far a host's clock may be from the caller's for a default attestation time.
_CLOCK_SKEW_NS: Final = 300 * 10**9
_SECOND_NS: Final = 10**9
_INT64_MAX: Final = 2**63 - 1
#: Blobs up to this size get every byte flipped; longer ones a sample of positions.
_FLIP_ALL_UP_TO: Final = 512


def _untyped(value: object) -> Any:
    """``value``, typed Any: the suite passes wrong types on purpose."""
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def _refused(
    what: str, call: Callable[[], Awaitable[object]], error: type[Exception] = HostError
) -> Exception:
    """Run ``call``; it must raise ``error``. Return the error."""
    try:
        result = await call()
    except error as exc:
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected {error.__name__}, got {type(exc).__name__}: {_show(str(exc))}"
        ) from None
    raise AssertionError(f"{what}: expected {error.__name__}, the call returned {_show(result)}")


class _Run:
    """What one run of the suite knows and has made so far."""

    name: auth.Prin
    other_name: auth.Prin

    def __init__(
        self,
        tao: Tao,
        other: Tao,
        *,
        policy_cert: bytes | PolicyAnchor | Unrooted,
        clock: Callable[[], int],
    ) -> None:
        self.tao = tao
        self.other = other
        self.policy_cert = policy_cert
        self.clock = clock
        self.tag = secrets.token_hex(6)
        self.blobs: dict[str, bytes] = {}
        self.secrets: dict[str, bytes] = {}
        self.counted: dict[str, int] = {}  # label -> counter the suite left it at
        self.rp_blob = b""

    def label(self, what: str) -> str:
        return f"check_tao.{self.tag}.{what}"

    def validate(self, att: Attestation, now_ns: int | None = None) -> Any:
        return validate(
            att, now_ns=self.clock() if now_ns is None else now_ns, policy_cert=self.policy_cert
        )


async def _step(name: str, check: Callable[[], Awaitable[None]]) -> None:
    try:
        await check()
    except AssertionError as exc:
        raise AssertionError(f"check_tao: {name}: {exc}") from None
    except Exception as exc:
        raise AssertionError(
            f"check_tao: {name}: unexpected {type(exc).__name__}: {_show(str(exc))}"
        ) from exc


# -- names ---------------------------------------------------------------------------


async def _names(run: _Run) -> None:
    name = await run.tao.get_tao_name()
    _require(isinstance(name, auth.Prin), f"get_tao_name returned {_show(name)}, not a Prin")
    _require(await run.tao.get_tao_name() == name, "the name changed between two calls")
    other = await run.other.get_tao_name()
    _require(isinstance(other, auth.Prin), f"the other Tao's name is {_show(other)}")
    _require(
        not other.is_sub_principal_of(name) and not name.is_sub_principal_of(other),
        f"the other program's name {other} must be another program than {name}, "
        "not the same name or an extension of it",
    )
    run.name, run.other_name = name, other


# -- random bytes --------------------------------------------------------------------


async def _random_bytes(run: _Run) -> None:
    tao = run.tao
    for n in (0, 1, 16, 32, 1000):
        data = await tao.get_random_bytes(n)
        _require(isinstance(data, bytes), f"get_random_bytes({n}) returned {_show(data)}")
        _require(len(data) == n, f"get_random_bytes({n}) returned {len(data)} bytes")
    first, second = await tao.get_random_bytes(32), await tao.get_random_bytes(32)
    _require(first != second, "two draws of 32 random bytes are equal")
    _require(first != bytes(32), "32 random bytes are all zero")
    large = await tao.get_random_bytes(MAX_RANDOM_BYTES)
    _require(len(large) == MAX_RANDOM_BYTES, f"get_random_bytes({MAX_RANDOM_BYTES}) is short")
    _require(
        len(set(large)) == 256,
        f"{MAX_RANDOM_BYTES} random bytes hold only {len(set(large))} of the 256 byte values",
    )
    bad: list[Any] = [-1, MAX_RANDOM_BYTES + 1, 2.0, True]
    for n in bad:
        await _refused(f"get_random_bytes({n!r})", partial(tao.get_random_bytes, n))


# -- shared secrets --------------------------------------------------------------------


async def _shared_secrets(run: _Run) -> None:
    tao, other = run.tao, run.other
    for policy in sorted(SEAL_POLICIES):
        secret = await tao.get_shared_secret(32, policy)
        _require(
            isinstance(secret, bytes) and len(secret) == 32,
            f"get_shared_secret(32, {policy!r}) returned {_show(secret)}",
        )
        again = await tao.get_shared_secret(32, policy)
        _require(secret == again, f"get_shared_secret(32, {policy!r}) differs between calls")
        run.secrets[policy] = secret
    _require(
        await tao.get_shared_secret(32) == run.secrets[SEAL_POLICY_SELF],
        "the default policy of get_shared_secret is not 'self'",
    )
    _require(
        len(set(run.secrets.values())) == len(SEAL_POLICIES),
        "two policies give the same shared secret",
    )
    for n in (0, 1, 16, 64, 255):
        secret = await tao.get_shared_secret(n)
        _require(len(secret) == n, f"get_shared_secret({n}) returned {len(secret)} bytes")
    for policy in (SEAL_POLICY_SELF, SEAL_POLICY_FEW):
        _require(
            await other.get_shared_secret(32, policy) != run.secrets[policy],
            f"another program gets the same {policy!r} shared secret",
        )
    _require(
        await other.get_shared_secret(32, SEAL_POLICY_ANY) == run.secrets[SEAL_POLICY_ANY],
        "another program on the host gets another 'any' shared secret",
    )
    bad: list[tuple[Any, str]] = [(-1, "self"), (MAX_RANDOM_BYTES + 1, "self"), (32, "none")]
    for n, policy in bad:
        await _refused(
            f"get_shared_secret({n!r}, {policy!r})",
            partial(tao.get_shared_secret, n, policy),
        )


# -- sealing -----------------------------------------------------------------------------


async def _seal_round_trips(run: _Run) -> None:
    tao = run.tao
    for policy in (SEAL_POLICY_SELF, SEAL_POLICY_FEW, SEAL_POLICY_ANY):
        blob = await tao.seal(_DATA, policy)
        _require(isinstance(blob, bytes), f"seal under {policy!r} returned {_show(blob)}")
        _require(_DATA not in blob, f"the data sealed under {policy!r} is visible in the blob")
        opened = await tao.unseal(blob)
        _require(
            opened == (_DATA, policy),
            f"unseal of a blob sealed under {policy!r} returned {_show(opened)}",
        )
        run.blobs[policy] = blob
    default = await tao.seal(_DATA)
    _require(await tao.unseal(default) == (_DATA, SEAL_POLICY_SELF), "seal's default isn't self")
    _require(await tao.seal(_DATA) != default, "sealing the same data twice gave the same blob")
    for data in (b"", bytes(range(256))):
        opened = await tao.unseal(await tao.seal(data))
        _require(opened == (data, SEAL_POLICY_SELF), f"{len(data)} bytes did not round trip")
    for policy in ("none", "", "SELF"):
        await _refused(f"seal under policy {policy!r}", partial(tao.seal, _DATA, policy))


async def _seal_other_program(run: _Run) -> None:
    tao, other = run.tao, run.other
    for policy in (SEAL_POLICY_SELF, SEAL_POLICY_FEW):
        await _refused(
            f"another program unsealing a {policy!r} blob",
            partial(other.unseal, run.blobs[policy]),
        )
    opened = await other.unseal(run.blobs[SEAL_POLICY_ANY])
    _require(
        opened == (_DATA, SEAL_POLICY_ANY),
        f"another program on the host cannot unseal an 'any' blob: {_show(opened)}",
    )
    theirs = await other.seal(_DATA)
    await _refused("unsealing another program's 'self' blob", lambda: tao.unseal(theirs))


def _flip_positions(size: int) -> list[int]:
    if size <= _FLIP_ALL_UP_TO:
        return list(range(size))
    step = size // _FLIP_ALL_UP_TO + 1
    return sorted({*range(0, 64), *range(64, size, step), *range(size - 64, size)})


async def _seal_tampering(run: _Run) -> None:
    tao = run.tao
    for policy, blob in sorted(run.blobs.items()):
        for i in _flip_positions(len(blob)):
            tampered = bytearray(blob)
            tampered[i] ^= 0x01
            await _refused(
                f"unseal of a {policy!r} blob with byte {i} of {len(blob)} flipped",
                partial(tao.unseal, bytes(tampered)),
            )
    blob = run.blobs[SEAL_POLICY_SELF]
    cuts = {
        "without its last byte": blob[:-1],
        "cut in half": blob[: len(blob) // 2],
        "cut to one byte": blob[:1],
        "empty": b"",
        "with a byte appended": blob + b"\x00",
        "garbage of 32 bytes": secrets.token_bytes(32),
        "garbage as long as the blob": secrets.token_bytes(len(blob)),
    }
    for what, bad in cuts.items():
        await _refused(f"unseal of a blob {what}", partial(tao.unseal, bad))
    _require(
        await tao.unseal(blob) == (_DATA, SEAL_POLICY_SELF),
        "after refusing tampered blobs, the Tao no longer unseals the original",
    )


async def _seal_limits(run: _Run) -> None:
    tao = run.tao
    largest = bytes(MAX_SEALED_BYTES)
    blob = await tao.seal(largest)
    opened = await tao.unseal(blob)
    _require(opened == (largest, SEAL_POLICY_SELF), f"{MAX_SEALED_BYTES} bytes did not round trip")
    del largest, blob, opened
    await _refused(
        f"seal of {MAX_SEALED_BYTES + 1} bytes", lambda: tao.seal(bytes(MAX_SEALED_BYTES + 1))
    )
    await _refused(
        "unseal of garbage longer than any sealed blob",
        lambda: tao.unseal(bytes(MAX_SEALED_BYTES + 2048)),
    )


# -- attestations ----------------------------------------------------------------------


async def _attest(run: _Run) -> None:
    tao, name = run.tao, run.name
    before = run.clock()
    att = await tao.attest(_MESSAGE)
    after = run.clock()
    _require(isinstance(att, Attestation), f"attest returned {_show(att)}")
    proven = run.validate(att)
    _require(proven.speaker == name, f"the speaker is {proven.speaker}, not the Tao's name {name}")
    _require(proven.message == _MESSAGE, f"the message is {proven.message}, not {_MESSAGE}")
    run.validate(Attestation.from_bytes(att.to_bytes()))
    says = att.statement()
    _require(
        says.time is not None and before - _CLOCK_SKEW_NS <= says.time <= after + _CLOCK_SKEW_NS,
        f"the default time {says.time} is not the time of the call ({before} ns)",
    )
    _require(
        says.time is not None
        and says.expiration is not None
        and says.expiration - says.time == DEFAULT_VALIDITY_NS,
        "the default validity is not one year",
    )

    issuer = name.extend(_EXT1)
    proven = run.validate(await tao.attest(_MESSAGE, issuer=issuer))
    _require(proven.speaker == issuer, f"attest with issuer {issuer} spoke as {proven.speaker}")
    _require(await tao.get_tao_name() == name, "attesting with an issuer changed the name")

    start, end = before - 10 * _SECOND_NS, before + 3600 * _SECOND_NS
    att = await tao.attest(_MESSAGE, time=start, expiration=end)
    says = att.statement()
    _require(
        (says.time, says.expiration) == (start, end),
        f"asked for times {start}..{end}, the statement has {says.time}..{says.expiration}",
    )
    run.validate(att, before)

    async def validate_at_end() -> object:
        return run.validate(att, end)

    await _refused("validating at the expiration asked for", validate_at_end, AuthenticationError)

    await _refused(
        f"attest with another program's name {run.other_name} as issuer",
        lambda: tao.attest(_MESSAGE, issuer=run.other_name),
    )
    bad_times: list[tuple[str, dict[str, Any]]] = [
        ("time 2**63", {"time": 2**63}),
        ("expiration -2**63 - 1", {"expiration": -(2**63) - 1}),
        ("time 2**63 - 1 and the default expiration", {"time": _INT64_MAX}),
    ]
    for what, times in bad_times:
        await _refused(f"attest with {what}", partial(tao.attest, _MESSAGE, **times))


async def _wrong_types(run: _Run) -> None:
    """Arguments of the wrong type: TypeError or HostError, never another exception."""
    tao = run.tao
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("attest of a str", partial(tao.attest, _untyped("CheckTao()"))),
        ("attest with a str issuer", partial(tao.attest, _MESSAGE, issuer=_untyped(str(run.name)))),
        ("seal of a str", partial(tao.seal, _untyped("text"))),
        ("seal under policy None", partial(tao.seal, _DATA, _untyped(None))),
        ("get_shared_secret under policy None", partial(tao.get_shared_secret, 32, _untyped(None))),
        ("get_random_bytes of None", partial(tao.get_random_bytes, _untyped(None))),
    ]
    for what, call in calls:
        try:
            result = await call()
        except (TypeError, HostError):
            continue
        except Exception as exc:
            raise AssertionError(
                f"{what}: expected TypeError or HostError, got {type(exc).__name__}: "
                f"{_show(str(exc))}"
            ) from None
        raise AssertionError(f"{what}: expected TypeError or HostError, got {_show(result)}")
    _require(await tao.get_tao_name() == run.name, "the Tao broke after wrong argument types")


# -- concurrency -----------------------------------------------------------------------


async def _concurrent_calls(run: _Run) -> None:
    tao = run.tao
    results: dict[int, tuple[bytes, str]] = {}
    draws: set[bytes] = set()

    async def one(i: int) -> None:
        data = _DATA + bytes([i])
        results[i] = await tao.unseal(await tao.seal(data))
        draws.add(await tao.get_random_bytes(32))

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(one, i)
    for i in range(16):
        _require(
            results.get(i) == (_DATA + bytes([i]), SEAL_POLICY_SELF),
            f"concurrent call {i} got another call's answer: {_show(results.get(i))}",
        )
    _require(len(draws) == 16, "concurrent draws of random bytes repeat")


# -- counters ----------------------------------------------------------------------------


async def _counters(run: _Run) -> None:
    tao, other = run.tao, run.other
    label = run.label("init")
    await _refused("get_counter of a label never set", lambda: tao.get_counter(label))
    await tao.init_counter(label, 5)
    _require(await tao.get_counter(label) == 5, "init_counter(5) then get_counter is not 5")
    await tao.init_counter(label, 5)
    await _refused("init_counter below the current value", lambda: tao.init_counter(label, 4))
    _require(await tao.get_counter(label) == 5, "a refused init_counter moved the counter")
    await tao.init_counter(label, 9)
    _require(await tao.get_counter(label) == 9, "init_counter(9) then get_counter is not 9")
    run.counted[label] = 9
    await _refused("another program reading this one's counter", lambda: other.get_counter(label))

    longest = run.label("").ljust(MAX_LABEL_BYTES, "x")
    await tao.init_counter(longest, 0)
    _require(await tao.get_counter(longest) == 0, f"a {MAX_LABEL_BYTES}-byte label failed")
    bad_labels: list[Any] = ["", longest + "x", 7]
    for bad in bad_labels:
        await _refused(f"init_counter with label {_show(bad)}", partial(tao.init_counter, bad, 1))
    bad_counters: list[Any] = [-1, MAX_COUNTER + 1, 1.0]
    for value in bad_counters:
        await _refused(
            f"init_counter to {value!r}", partial(tao.init_counter, run.label("bad"), value)
        )


async def _rollback_protected_sealing(run: _Run) -> None:
    tao, other = run.tao, run.other
    label = run.label("seal")
    first = await tao.rollback_protected_seal(label, b"first")
    _require(await tao.get_counter(label) == 1, "the first rollback-protected seal is not at 1")
    opened = await tao.rollback_protected_unseal(first)
    _require(opened == (b"first", SEAL_POLICY_SELF), f"rollback-protected unseal: {_show(opened)}")
    second = await tao.rollback_protected_seal(label, b"second")
    _require(await tao.get_counter(label) == 2, "the second rollback-protected seal is not at 2")
    opened = await tao.rollback_protected_unseal(second)
    _require(opened == (b"second", SEAL_POLICY_SELF), f"the newest blob opened as {_show(opened)}")
    await _refused(
        "unseal of an older rollback-protected blob", lambda: tao.rollback_protected_unseal(first)
    )
    run.rp_blob = second

    await _refused(
        f"rollback-protected seal of {MAX_SEALED_BYTES + 1} bytes",
        lambda: tao.rollback_protected_seal(label, bytes(MAX_SEALED_BYTES + 1)),
    )
    for policy in (SEAL_POLICY_ANY, "none"):
        await _refused(
            f"rollback-protected seal under {policy!r}",
            partial(tao.rollback_protected_seal, label, b"x", policy),
        )
    _require(
        await tao.get_counter(label) == 2, "a refused rollback-protected seal moved the counter"
    )
    run.counted[label] = 2

    few_label = run.label("few")
    few = await tao.rollback_protected_seal(few_label, b"few", SEAL_POLICY_FEW)
    opened = await tao.rollback_protected_unseal(few)
    _require(opened == (b"few", SEAL_POLICY_FEW), f"a 'few' blob opened as {_show(opened)}")

    await _refused(
        "another program's rollback-protected unseal",
        lambda: other.rollback_protected_unseal(second),
    )
    tampered = bytearray(second)
    tampered[-1] ^= 0x01
    await _refused(
        "rollback-protected unseal of a tampered blob",
        lambda: tao.rollback_protected_unseal(bytes(tampered)),
    )
    await _refused(
        "rollback-protected unseal of a plain sealed blob",
        lambda: tao.rollback_protected_unseal(run.blobs[SEAL_POLICY_SELF]),
    )
    at_max = run.label("max")
    await tao.init_counter(at_max, MAX_COUNTER)
    await _refused(
        "rollback-protected seal past the largest counter",
        lambda: tao.rollback_protected_seal(at_max, b"x"),
    )
    _require(await tao.get_counter(at_max) == MAX_COUNTER, "a counter moved past its maximum")
    # The newest blob still opens after all those refusals.
    opened = await tao.rollback_protected_unseal(second)
    _require(opened == (b"second", SEAL_POLICY_SELF), "the newest blob no longer opens")


async def _no_counters(run: _Run) -> None:
    tao = run.tao
    label = run.label("unsupported")
    expected = NotSupportedError
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "init_counter": lambda: tao.init_counter(label, 1),
        "get_counter": lambda: tao.get_counter(label),
        "rollback_protected_seal": lambda: tao.rollback_protected_seal(label, b"x"),
        "rollback_protected_unseal": lambda: tao.rollback_protected_unseal(
            run.blobs[SEAL_POLICY_SELF]
        ),
    }
    kinds = set()
    for what, call in calls.items():
        exc = await _refused(f"{what} on a Tao without counters", call, expected)
        kinds.add(type(exc))
    _require(len(kinds) == 1, f"the counter methods refuse with different errors: {kinds}")
    _require(await tao.get_tao_name() == run.name, "the Tao broke after refusing counters")


# -- a fresh Tao of the same program ---------------------------------------------------


async def _same_program(run: _Run, again: Tao, *, counters: bool) -> None:
    name = await again.get_tao_name()
    _require(name == run.name, f"a fresh Tao of the same program is named {name}, not {run.name}")
    for policy, secret in run.secrets.items():
        _require(
            await again.get_shared_secret(32, policy) == secret,
            f"a fresh Tao of the same program gets another {policy!r} shared secret",
        )
    for policy, blob in run.blobs.items():
        opened = await again.unseal(blob)
        _require(
            opened == (_DATA, policy),
            f"a fresh Tao of the same program cannot unseal its {policy!r} blob: {_show(opened)}",
        )
    if counters:
        for label, value in run.counted.items():
            got = await again.get_counter(label)
            _require(got == value, f"counter {label!r} is {got} in a fresh Tao, not {value}")
        opened = await again.rollback_protected_unseal(run.rp_blob)
        _require(opened == (b"second", SEAL_POLICY_SELF), "a fresh Tao cannot open the newest blob")


# -- extending the name ------------------------------------------------------------------


async def _extend(run: _Run, ext: Tao) -> None:
    start = await ext.get_tao_name()
    _require(start == run.name, f"a fresh Tao is named {start}, not {run.name}")
    await ext.extend_tao_name(_EXT1)
    once = await ext.get_tao_name()
    _require(once == start.extend(_EXT1), f"extending {start} by {_EXT1} gave {once}")
    await ext.extend_tao_name(_EXT2)
    twice = await ext.get_tao_name()
    _require(
        twice == start.extend(_EXT1).extend(_EXT2), f"extending {once} by {_EXT2} gave {twice}"
    )
    _require(twice.is_sub_principal_of(start), "the extended name is not a sub-principal")
    _require(await run.tao.get_tao_name() == run.name, "extending one Tao renamed another")
    not_subprins: list[Any] = ["CheckTao(1)", _MESSAGE, None]
    for bad in not_subprins:
        await _refused(f"extend_tao_name({_show(bad)})", partial(ext.extend_tao_name, bad))
    _require(await ext.get_tao_name() == twice, "a refused extension changed the name")

    proven = run.validate(await ext.attest(_MESSAGE))
    _require(proven.speaker == twice, f"after extending, attest speaks as {proven.speaker}")
    for policy in (SEAL_POLICY_SELF, SEAL_POLICY_FEW):
        await _refused(
            f"the extended name unsealing the original name's {policy!r} blob",
            partial(ext.unseal, run.blobs[policy]),
        )
        _require(
            await ext.get_shared_secret(32, policy) != run.secrets[policy],
            f"the extended name gets the original name's {policy!r} shared secret",
        )
    opened = await ext.unseal(run.blobs[SEAL_POLICY_ANY])
    _require(opened == (_DATA, SEAL_POLICY_ANY), "the extended name cannot unseal an 'any' blob")
    _require(
        await ext.get_shared_secret(32, SEAL_POLICY_ANY) == run.secrets[SEAL_POLICY_ANY],
        "the extended name gets another 'any' shared secret",
    )
    blob = await ext.seal(_DATA)
    _require(await ext.unseal(blob) == (_DATA, SEAL_POLICY_SELF), "the extended name's seal")
    await _refused(
        "the original name unsealing its extension's 'self' blob", lambda: run.tao.unseal(blob)
    )


# -- the suite ------------------------------------------------------------------------------


async def check_tao(
    make_tao: TaoFactory,
    make_other_tao: TaoFactory,
    *,
    policy_cert: bytes | PolicyAnchor | Unrooted,
    counters: bool,
    clock: Callable[[], int] = time.time_ns,
) -> None:
    """Check that the Tao backend behind the factories honours the whole interface.

    ``make_tao()`` must yield, each time it is called, a fresh Tao of one program on
    one host (the same initial name each time: a new connection or a restarted
    program); ``make_other_tao()`` a Tao of another program on the same host (a name
    that is neither that one nor an extension of it). Up to three of the first and
    one of the second are open at once. ``policy_cert`` is what attestations are
    validated under (the domain's policy certificate, or
    :data:`~taonet.attestation.UNROOTED` for a host no domain certified);
    ``counters`` says whether the backend has monotonic counters and
    rollback-protected sealing; ``clock`` is the host's clock in ns since the epoch.

    Raises AssertionError naming the first check that failed. The suite asks for
    large sizes (a maximal sealed payload, 16 MiB), so give it a backend with its
    default limits and a generous ``trio.fail_after``.
    """
    if not isinstance(counters, bool):
        raise TypeError("counters must be True or False")
    async with make_tao() as tao, make_other_tao() as other:
        run = _Run(tao, other, policy_cert=policy_cert, clock=clock)
        await _step("names", lambda: _names(run))
        await _step("get_random_bytes", lambda: _random_bytes(run))
        await _step("get_shared_secret", lambda: _shared_secrets(run))
        await _step("seal and unseal", lambda: _seal_round_trips(run))
        await _step("seal and another program", lambda: _seal_other_program(run))
        await _step("tampered sealed data", lambda: _seal_tampering(run))
        await _step("seal size limits", lambda: _seal_limits(run))
        await _step("attest", lambda: _attest(run))
        await _step("wrong argument types", lambda: _wrong_types(run))
        await _step("concurrent calls", lambda: _concurrent_calls(run))
        if counters:
            await _step("counters", lambda: _counters(run))
            await _step("rollback-protected sealing", lambda: _rollback_protected_sealing(run))
        else:
            await _step("no counters", lambda: _no_counters(run))
        async with make_tao() as again:
            await _step(
                "a fresh Tao of the same program",
                lambda: _same_program(run, again, counters=counters),
            )
        async with make_tao() as ext:
            await _step("extend_tao_name", lambda: _extend(run, ext))
