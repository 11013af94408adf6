"""Version 2 obtains and seals 100 keys from version 1 over one channel, against sealing
the same keys locally, in the same run.

Everything runs in this one process on 127.0.0.1: a fresh domain (its real policy
key), a certified soft host, two program identities certified by the policy key
(version 1 and version 2, different code, so different names), the domain's CRL on
both sides. Version 1 serves ``--keys`` random 32-byte keys with
:func:`taonet.disclosure.peer.serve_disclosure`; version 2 holds one directive per
key (signed beforehand by the policy key, or with ``--signer program`` by version 1
with its certificate: the issuance is not timed).

Two subjects, alternating each round:

* ``fetch``: :func:`taonet.disclosure.peer.fetch_and_seal`: open a Tao channel
  (TLS 1.3 handshake, both certificates and the CRL checked), one
  ``Disclosure.Fetch`` of every key (the server verifies each directive, checks
  the grants, answers), then seal them with version 2's Tao and write the file
  atomically (fsync, rename);
* ``local``: the same keys sealed with version 2's Tao and written the same way,
  without the fetch (what version 2 pays for keys it already has).

Prints a table, then as its last line one JSON object: ``fetch_and_seal_ms``,
``local_seal_ms`` (medians), ``fetch_vs_local_ratio`` (median of the per-round
ratios), ``per_key_fetch_us``, and the run's parameters.

    python loadtests/disclosure_bench.py [--quick] [--keys N] [--rounds N] [--signer policy|program]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import structlog
import trio

from taonet import auth, certs
from taonet.channel import ChannelIdentity, CRLSource
from taonet.crypto import KdfParams, Signer
from taonet.disclosure import DirectiveOp, sign_directive
from taonet.disclosure.peer import fetch_and_seal, open_sealed, serve_disclosure
from taonet.domain import Domain, DomainTemplate
from taonet.files import atomic_write
from taonet.hosts import SoftHost, Tao
from taonet.protected import KEY_TYPE, ObjectId, SecretObject, Status, encode_object_store

PASSWORD = b"bench"
HOUR = 3600 * 10**9


def program(
    domain: Domain, host: SoftHost, policy: Signer, code: bytes
) -> tuple[ChannelIdentity, Tao]:
    name = domain.program_name(code.ljust(32, b".")[:32], host=host.name)
    assert isinstance(name, auth.Prin)
    key = Signer.generate()
    issued = certs.issue_program_certificate(
        policy, domain.policy_anchor, key.public_key_der(), name, now_ns=time.time_ns()
    )
    identity = ChannelIdentity(domain.policy_cert, signer=key, certificate=issued.der)
    return identity, host.tao_for(name)


async def run(tmp: Path, keys: int, rounds: int, by_program: bool) -> dict[str, list[float]]:
    kdf = KdfParams.for_tests()
    domain = Domain.create(tmp / "domain", DomainTemplate(guard="Liberal"), PASSWORD, kdf=kdf)
    policy = domain.unlock(PASSWORD)
    host = SoftHost.create(tmp / "host", PASSWORD, kdf=kdf)
    host.set_root_endorsement(domain.certify_host(policy, host.public_key_der()))
    v1, _ = program(domain, host, policy, b"simpleclient v1")
    v2, v2_tao = program(domain, host, policy, b"simpleclient v2")
    assert v1.certificate is not None
    assert v2.principal is not None
    v1_name = v1.principal
    assert v1_name is not None
    crl_der = certs.make_crl(policy, domain.policy_anchor, [], now_ns=time.time_ns())
    crl = CRLSource(domain.policy_cert)
    await crl.update(crl_der)

    ids = [ObjectId(f"/app/key/{i}", 1) for i in range(keys)]
    objects = {
        oid: SecretObject(oid, KEY_TYPE, Status.ACTIVE, None, None, os.urandom(32)) for oid in ids
    }
    signer, cert = (v1.signer, v1.certificate.der) if by_program else (policy, None)
    assert signer is not None
    until = time.time_ns() + HOUR
    directives = [
        sign_directive(
            signer,
            op=DirectiveOp.READ,
            delegate=v2.principal,
            object_id=oid,
            not_after=until,
            cert=cert,
        )
        for oid in ids
    ]
    samples: dict[str, list[float]] = {"fetch": [], "local": []}
    out = tmp / "v2"
    out.mkdir()

    async def fetch(address: tuple[str, int]) -> float:
        start = time.perf_counter()
        got = await fetch_and_seal(
            address,
            v2,
            directives,
            ids,
            tao=v2_tao,
            path=out / "fetched.sealed",
            revocations=crl,
            server=v1_name,
            replace=True,  # each round seals the same keys again: no merge
        )
        took = time.perf_counter() - start
        assert len(got) == keys
        return took

    async def local() -> float:
        start = time.perf_counter()
        sealed = await v2_tao.seal(encode_object_store(objects.values()), "self")
        await trio.to_thread.run_sync(
            functools.partial(atomic_write, out / "local.sealed", sealed, mode=0o600)
        )
        return time.perf_counter() - start

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(serve_disclosure, objects, 0, v1, revocations=crl)
        )
        address = ("127.0.0.1", listeners[0].socket.getsockname()[1])
        with trio.fail_after(600):
            await fetch(address)  # warm up both paths (imports, caches)
            await local()
            assert await open_sealed(v2_tao, out / "fetched.sealed") == objects
            for i in range(rounds):
                order = ("fetch", "local") if i % 2 == 0 else ("local", "fetch")
                for subject in order:
                    took = await fetch(address) if subject == "fetch" else await local()
                    samples[subject].append(took)
        nursery.cancel_scope.cancel()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run well under a minute")
    parser.add_argument("--keys", type=int, default=100, help="keys fetched at once")
    parser.add_argument("--rounds", type=int, help="alternating rounds (median taken)")
    parser.add_argument("--signer", choices=("policy", "program"), default="policy")
    args = parser.parse_args()
    rounds = args.rounds or (10 if args.quick else 40)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        samples = trio.run(run, Path(tmp), args.keys, rounds, args.signer == "program")
    fetch_ms = statistics.median(samples["fetch"]) * 1000
    local_ms = statistics.median(samples["local"]) * 1000
    ratio = statistics.median(
        fetched / here for fetched, here in zip(samples["fetch"], samples["local"], strict=True)
    )
    print(f"{args.keys} keys, {rounds} rounds, directives signed by the {args.signer} key")
    print(f"{'subject':10s} {'median ms':>10s}")
    print(f"{'fetch':10s} {fetch_ms:10.2f}")
    print(f"{'local':10s} {local_ms:10.2f}")
    print(f"fetch_vs_local_ratio {ratio:.2f}")
    print(
        json.dumps(
            {
                "keys": args.keys,
                "rounds": rounds,
                "signer": args.signer,
                "fetch_and_seal_ms": round(fetch_ms, 3),
                "local_seal_ms": round(local_ms, 3),
                "fetch_vs_local_ratio": round(ratio, 3),
                "per_key_fetch_us": round(fetch_ms * 1000 / args.keys, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
