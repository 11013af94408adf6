"""What one request full of directives costs a disclosure peer (review A5 F2).

Any program of the domain can sign ``Read(itself, X)`` with its own certificate. It
sends one request that asks for one id and carries 1000 such directives (999 for ids
it does not ask for). This times, over a real Tao channel on 127.0.0.1 in one
process, that refused request against a granted one-id request in the same run, counts
the directive signatures the server checks for it, and records the longest the event
loop went without running a ticker task (what every other connection waits) during it.
Run it from two checkouts to compare (PYTHONPATH=. so that each imports its own
taonet, not the one installed)::

    PYTHONPATH=. python tests/disclosure/measure_directive_flood.py [--rounds 5] [--directives 1000]

Prints one JSON line: ``flood_ms`` and ``granted_ms`` (medians), their ratio,
``verifications_per_flood`` and ``max_loop_stall_ms`` (over every flood).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
import trio

import taonet.disclosure._peer as peer_module
from taonet import auth, certs
from taonet.channel import ChannelIdentity, CRLSource
from taonet.crypto import KdfParams, Signer
from taonet.disclosure import Directive, DirectiveOp, sign_directive, verify_directive
from taonet.disclosure.peer import DisclosureRefusedError, request_disclosure, serve_disclosure
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.protected import KEY_TYPE, ObjectId, SecretObject, Status

PASSWORD = b"measure"
HOUR = 3600 * 10**9
KEY = ObjectId("/app/content-key", 1)


def program(domain: Domain, host: SoftHost, policy: Signer, code: bytes) -> ChannelIdentity:
    name = domain.program_name(code.ljust(32, b".")[:32], host=host.name)
    assert isinstance(name, auth.Prin)
    key = Signer.generate()
    issued = certs.issue_program_certificate(
        policy, domain.policy_anchor, key.public_key_der(), name, now_ns=time.time_ns()
    )
    return ChannelIdentity(domain.policy_cert, signer=key, certificate=issued.der)


def directive(signer: Signer, to: auth.Prin, oid: ObjectId, cert: bytes | None) -> bytes:
    return sign_directive(
        signer,
        op=DirectiveOp.READ,
        delegate=to,
        object_id=oid,
        not_after=time.time_ns() + HOUR,
        cert=cert,
    )


async def measure(tmp: Path, rounds: int, count: int) -> dict[str, float]:
    kdf = KdfParams.for_tests()
    domain = Domain.create(tmp / "domain", DomainTemplate(guard="Liberal"), PASSWORD, kdf=kdf)
    policy = domain.unlock(PASSWORD)
    host = SoftHost.create(tmp / "host", PASSWORD, kdf=kdf)
    host.set_root_endorsement(domain.certify_host(policy, host.public_key_der()))
    v1 = program(domain, host, policy, b"v1")
    v2 = program(domain, host, policy, b"v2")
    anyone = program(domain, host, policy, b"anyone")
    assert v1.principal is not None
    assert v2.principal is not None
    assert anyone.principal is not None
    assert anyone.signer is not None
    assert anyone.certificate is not None
    crl = CRLSource(domain.policy_cert)
    await crl.update(certs.make_crl(policy, domain.policy_anchor, [], now_ns=time.time_ns()))
    me, cert = anyone.principal, anyone.certificate.der
    flood = [directive(anyone.signer, me, KEY, cert)] + [
        directive(anyone.signer, me, ObjectId(f"/junk/{i}", 1), cert) for i in range(count - 1)
    ]
    granted = directive(policy, v2.principal, KEY, None)
    keys = {KEY: SecretObject(KEY, KEY_TYPE, Status.ACTIVE, None, None, b"k" * 32)}

    calls = 0
    real = verify_directive

    def counting(raw: bytes, **options: Any) -> Directive:
        nonlocal calls
        calls += 1
        return real(raw, **options)

    setattr(peer_module, "verify_directive", counting)  # noqa: B010  (counted where it is called)
    stalls: list[float] = []
    watching = False

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await trio.sleep(0.0005)
            now = time.perf_counter()
            if watching:
                stalls.append(now - last)
            last = now

    flood_s: list[float] = []
    granted_s: list[float] = []
    floods = 0
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(serve_disclosure, keys, 0, v1, revocations=crl)
        )
        address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        nursery.start_soon(ticker)
        with trio.fail_after(600):
            for i in range(rounds + 1):  # the first round warms up (imports, caches)
                start = time.perf_counter()
                await request_disclosure(
                    address, v2, granted, [KEY], revocations=crl, server=v1.principal
                )
                took = time.perf_counter() - start
                if i:
                    granted_s.append(took)
                before = calls
                watching = bool(i)
                start = time.perf_counter()
                try:
                    await request_disclosure(
                        address, anyone, flood, [KEY], revocations=crl, server=v1.principal
                    )
                except DisclosureRefusedError:
                    pass
                else:
                    raise AssertionError("the flood was granted")
                took = time.perf_counter() - start
                watching = False
                if i:
                    flood_s.append(took)
                    floods += calls - before
        nursery.cancel_scope.cancel()
    flood_ms = statistics.median(flood_s) * 1e3
    granted_ms = statistics.median(granted_s) * 1e3
    return {
        "directives_per_flood": count,
        "flood_ms": round(flood_ms, 3),
        "granted_ms": round(granted_ms, 3),
        "flood_ratio_vs_granted": round(flood_ms / granted_ms, 3),
        "verifications_per_flood": floods / rounds,
        "max_loop_stall_ms": round(max(stalls, default=0.0) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--directives", type=int, default=1000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory() as tmp:
        figures = trio.run(measure, Path(tmp), args.rounds, args.directives)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
