"""Domain service: program certificates per second over fresh connections.

In one process on 127.0.0.1, against a domain service with an ACL guard, each
figure measured with one client at a time (``_c1``) and with ``--clients`` at once
(``_cN``, the default 8):

* ``certs_per_s``: each request opens a fresh (anonymous-client) Tao channel, sends an
  attestation and a key, and verifies the certificate it gets back, as
  :func:`taonet.provision.request_certificate` does (the service records each one in
  its audit log, durably, before answering);
* baseline ``handshakes_per_s``: fresh anonymous channel handshakes to the same
  service, with no request (the connection cost alone);
* ``certify_only_per_s``: :class:`ProgramCertifier.certify` called directly (the
  service's checks and signing, no network, no audit; one at a time);
* ``verify_only_per_s``: :func:`taonet.certs.verify_program_certificate` of a
  certificate not seen before, as the client checks what it gets back.

``certs_vs_handshakes`` is ``certs_per_s / handshakes_per_s`` of the same run and
client count; ``cpu_ms_per_cert`` and ``cpu_ms_per_handshake`` are the process's CPU
time (every thread, client and service together) per operation.
With ``--server-process`` the service is ``taonet domain-service`` in a process of
its own (as it is deployed: client and service then each have a core), the
``cpu_ms_per_*`` figures are this (client) process's, and ``server_cpu_ms_per_*`` the
service's (from ``/proc``, so Linux only).
``certs_vs_handshakes_cpu_cN`` is the same ratio from CPU time instead of wall time:
``cpu_ms_per_handshake / cpu_ms_per_cert`` (with ``--server-process``, the client's and
the service's together), what the ratio is when the CPU is the limit. On a machine
shared with other work it moves far less than the wall-time ratios, which also count
waiting for a core and, with one client, for each certificate's audit commit
(``fsync``) to reach the disk.
``certs_vs_handshakes_ceiling`` is what that ratio would be, CPU-bound, if nothing but
the handshake, the certification and the client's check of the certificate cost
anything (no audit write, no request or answer bytes, no log line):
``cpu_ms_per_handshake / (cpu_ms_per_handshake + cpu_ms_per_certify_only +
cpu_ms_per_verify_only)``, with the figures of ``--clients``.

Requests cycle through a pool of real attestations, one per program key, made before
timing starts: the service asks for no fresh one per request (each is checked in
full every time: signature, validity window, key, guard), so re-sending one is what
a program re-provisioning the same key does. Every phase runs for a time, not a
number of requests, so a faster machine makes more requests, never runs out.
Phases alternate over the rounds; rates are medians. The last line is JSON.

    python loadtests/domain_service_bench.py [--quick] [--clients N] [--seconds S]
        [--server-process]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import trio

from taonet import auth, certs, configure_logging
from taonet.attestation import Attestation
from taonet.channel import ChannelIdentity, open_channel
from taonet.crypto import KdfParams, Signer
from taonet.domain import ACLGuard, Domain, DomainTemplate, ProgramCertifier
from taonet.hosts import SoftHost
from taonet.provision import request_certificate
from taonet_services.domain_service import ConnectionLimits, DomainService

PASSWORD = b"bench"
#: Distinct program keys (and attestations) the requests cycle through.
POOL = 64
#: Certificates the verify phase cycles through: more than a policy anchor remembers
#: (1024 checks), so that every check is done afresh.
VERIFY_POOL = 2500


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user and system) of process ``pid`` so far (Linux), or of this one."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _rate(
    fn: Callable[[], Awaitable[None]], seconds: float, clients: int, server: int | None
) -> tuple[float, float, float]:
    """Operations per second, and this process's and the ``server`` process's CPU ms
    per operation (0 without one), of ``clients`` loops of ``fn`` for ``seconds``
    (each loop finishes the operation it started)."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await fn()
            count += 1

    cpu, start = time.process_time(), time.perf_counter()
    served = _process_cpu(server) if server is not None else 0.0
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(loop)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    served = _process_cpu(server) - served if server is not None else 0.0
    n = max(count, 1)
    return count / elapsed, 1000 * cpu / n, 1000 * served / n


@contextlib.asynccontextmanager
async def _service_process(domain: Domain, tmp: Path) -> AsyncIterator[tuple[int, int]]:
    """``taonet domain-service`` for ``domain`` on 127.0.0.1: its port and pid."""
    password = tmp / "password"
    password.write_bytes(PASSWORD + b"\n")
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "taonet", "domain-service", "--domain", str(domain.path)),
            *("--listen", "127.0.0.1:0", "--password-file", str(password)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its log lines: one per certificate
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(60):
            while b"\n" not in line:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise SystemExit("the domain service exited before listening")
                line += chunk
        match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", line)
        if match is None:
            raise SystemExit(f"the domain service said {line!r}")
        yield int(match.group(1)), process.pid
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def _pool(tmp: Path) -> tuple[Domain, list[tuple[Attestation, bytes]]]:
    domain = Domain.create(tmp / "d", DomainTemplate(), PASSWORD, kdf=KdfParams.for_tests())
    program_hash = b"\x5a" * 32
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    domain.save_guard(guard.with_rule(domain.program_rule(program_hash)), domain.unlock(PASSWORD))
    host = SoftHost.create(tmp / "h", PASSWORD, kdf=KdfParams.for_tests())
    host.set_root_endorsement(domain.certify_host(domain.unlock(PASSWORD), host.public_key_der()))
    name = domain.program_name(program_hash, host=host.name)
    assert isinstance(name, auth.Prin)
    tao = host.tao_for(name)
    pool = []
    for _ in range(POOL):
        key = Signer.generate()
        att = await tao.attest(auth.Speaksfor(auth.key_principal(key.public_key_der()), name))
        pool.append((att, key.public_key_der()))
    return domain, pool


async def bench(
    seconds: float, rounds: int, clients: int, *, server_process: bool = False
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        domain, pool = await _pool(Path(tmp))
        requests: Iterator[tuple[Attestation, bytes]] = itertools.cycle(pool)
        certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
        anonymous = ChannelIdentity.anonymous(domain.policy_cert)
        anchor = anonymous.anchor
        fresh = itertools.cycle(
            [certifier.certify(*pool[i % POOL]).der for i in range(VERIFY_POOL)]
        )
        samples: dict[str, list[float]] = {}
        async with contextlib.AsyncExitStack() as stack:
            server: int | None = None
            if server_process:
                port, server = await stack.enter_async_context(_service_process(domain, Path(tmp)))
            else:
                service = stack.enter_context(DomainService.open(domain.path, PASSWORD))
                nursery = await stack.enter_async_context(trio.open_nursery())
                stack.callback(nursery.cancel_scope.cancel)
                listeners = await nursery.start(functools.partial(service.serve, 0))
                port = listeners[0].socket.getsockname()[1]

            async def handshake() -> None:
                stream = await open_channel("127.0.0.1", port, anonymous)
                await stream.wait_accepted()
                await stream.aclose()

            async def certify() -> None:
                att, key = next(requests)
                await request_certificate("127.0.0.1", port, domain.policy_cert, att, key)

            async def certify_only() -> None:
                att, key = next(requests)
                certifier.certify(att, key)

            async def verify_only() -> None:
                certs.verify_program_certificate(anchor, next(fresh), now_ns=time.time_ns())

            phases: list[tuple[str, str, Callable[[], Awaitable[None]], int]] = [
                ("handshakes_per_s", "cpu_ms_per_handshake", handshake, 1),
                ("certs_per_s", "cpu_ms_per_cert", certify, 1),
                ("certify_only_per_s", "cpu_ms_per_certify_only", certify_only, 1),
                ("verify_only_per_s", "cpu_ms_per_verify_only", verify_only, 1),
            ]
            if clients > 1:
                phases += [
                    ("handshakes_per_s", "cpu_ms_per_handshake", handshake, clients),
                    ("certs_per_s", "cpu_ms_per_cert", certify, clients),
                ]
            for _ in range(rounds):
                for label, cpu_label, fn, n in phases:
                    remote = server if fn in (handshake, certify) else None
                    rate, cpu, served = await _rate(fn, seconds / rounds / len(phases), n, remote)
                    samples.setdefault(f"{label}_c{n}", []).append(rate)
                    samples.setdefault(f"{cpu_label}_c{n}", []).append(cpu)
                    if remote is not None:
                        samples.setdefault(f"server_{cpu_label}_c{n}", []).append(served)
    results = {k: statistics.median(v) for k, v in samples.items()}
    for label in (
        "certify_only_per_s",
        "cpu_ms_per_certify_only",
        "verify_only_per_s",
        "cpu_ms_per_verify_only",
    ):
        results[label] = results.pop(f"{label}_c1")
    hs_cpu = results[f"cpu_ms_per_handshake_c{clients}"]
    if server_process:  # the handshake's CPU is spread over both processes
        hs_cpu += results[f"server_cpu_ms_per_handshake_c{clients}"]
    results["certs_vs_handshakes_ceiling"] = hs_cpu / (
        hs_cpu + results["cpu_ms_per_certify_only"] + results["cpu_ms_per_verify_only"]
    )
    for n in sorted({1, clients}):
        results[f"certs_vs_handshakes_c{n}"] = (
            results[f"certs_per_s_c{n}"] / results[f"handshakes_per_s_c{n}"]
        )
    for n in sorted({1, clients}):
        hs_cpu, cert_cpu = results[f"cpu_ms_per_handshake_c{n}"], results[f"cpu_ms_per_cert_c{n}"]
        if server_process:
            hs_cpu += results[f"server_cpu_ms_per_handshake_c{n}"]
            cert_cpu += results[f"server_cpu_ms_per_cert_c{n}"]
        results[f"certs_vs_handshakes_cpu_c{n}"] = hs_cpu / cert_cpu
    # The headline figures: one client at a time, as the benchmark always measured.
    for label in ("handshakes_per_s", "certs_per_s", "certs_vs_handshakes"):
        results[label] = results[f"{label}_c1"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of about 15 seconds")
    parser.add_argument("--seconds", type=float, help="timed seconds in all (default 60)")
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients, 1 to 16 (default 8)"
    )
    parser.add_argument(
        "--server-process",
        action="store_true",
        help="run the service as `taonet domain-service` in its own process (Linux)",
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= ConnectionLimits().anonymous_per_address:
        # More would be refused: the service admits 16 anonymous connections per address.
        parser.error("--clients must be from 1 to 16")
    seconds = args.seconds or (12.0 if args.quick else 60.0)
    # The service logs as `taonet domain-service` does (one line per certificate, on
    # standard error): part of what a certificate costs.
    configure_logging()
    results = trio.run(
        functools.partial(
            bench,
            seconds,
            3 if args.quick else 5,
            args.clients,
            server_process=args.server_process,
        )
    )
    for k, v in results.items():
        print(f"{k:32s} {v:10.2f}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
