"""Domain service: program certificates per second over fresh connections.

In one process on 127.0.0.1, against a domain service with an ACL guard:

* ``certs_per_s``: each request opens a fresh (anonymous-client) Tao channel, sends an
  attestation and a key, and verifies the certificate it gets back, as
  :func:`taonet.provision.request_certificate` does;
* baseline ``handshakes_per_s``: fresh anonymous channel handshakes to the same
  service, with no request (the connection cost alone);
* ``certify_only_per_s``: :class:`ProgramCertifier.certify` called directly (the
  service's checks and signing, no network, no audit).

Attestations are made ahead of time (a real client makes one per provisioning).
Rounds alternate; rates are medians. The last line is JSON.

    python loadtests/domain_service_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import trio

from taonet import auth
from taonet.attestation import Attestation
from taonet.channel import ChannelIdentity, open_channel
from taonet.crypto import KdfParams, Signer
from taonet.domain import ACLGuard, Domain, DomainTemplate, ProgramCertifier
from taonet.hosts import SoftHost
from taonet.provision import request_certificate
from taonet_services.domain_service import DomainService

PASSWORD = b"bench"


async def bench(seconds: float, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        domain = Domain.create(
            Path(tmp) / "d", DomainTemplate(), PASSWORD, kdf=KdfParams.for_tests()
        )
        program_hash = b"\x5a" * 32
        guard = domain.guard
        assert isinstance(guard, ACLGuard)
        domain.save_guard(
            guard.with_rule(domain.program_rule(program_hash)), domain.unlock(PASSWORD)
        )
        host = SoftHost.create(Path(tmp) / "h", PASSWORD, kdf=KdfParams.for_tests())
        host.set_root_endorsement(
            domain.certify_host(domain.unlock(PASSWORD), host.public_key_der())
        )
        name = domain.program_name(program_hash, host=host.name)
        assert isinstance(name, auth.Prin)
        tao = host.tao_for(name)
        requests: list[tuple[Attestation, bytes]] = []
        for _ in range(3000 if seconds > 2 else 600):
            key = Signer.generate()
            att = await tao.attest(auth.Speaksfor(auth.key_principal(key.public_key_der()), name))
            requests.append((att, key.public_key_der()))
        service = DomainService.open(domain.path, PASSWORD)
        certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
        anonymous = ChannelIdentity.anonymous(domain.policy_cert)
        samples: dict[str, list[float]] = {
            "handshakes_per_s": [],
            "certs_per_s": [],
            "certify_only_per_s": [],
        }
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            it = iter(requests * 10)

            async def handshake() -> None:
                stream = await open_channel("127.0.0.1", port, anonymous)
                await stream.wait_accepted()
                await stream.aclose()

            async def certify() -> None:
                att, key = next(it)
                await request_certificate("127.0.0.1", port, domain.policy_cert, att, key)

            async def certify_only() -> None:
                att, key = next(it)
                certifier.certify(att, key)

            for _ in range(rounds):
                for label, fn in (
                    ("handshakes_per_s", handshake),
                    ("certs_per_s", certify),
                    ("certify_only_per_s", certify_only),
                ):
                    count, start = 0, time.perf_counter()
                    while time.perf_counter() - start < seconds / rounds:
                        await fn()
                        count += 1
                    samples[label].append(count / (time.perf_counter() - start))
            nursery.cancel_scope.cancel()
        service.close()
    results = {k: statistics.median(v) for k, v in samples.items()}
    results["certs_vs_handshakes"] = results["certs_per_s"] / results["handshakes_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 9.0)
    results = trio.run(bench, seconds, 3 if args.quick else 5)
    for k, v in results.items():
        print(f"{k:28s} {v:10.2f}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
