"""`taonet domain-service` as a real subprocess, used by a real client."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from taonet import TaoError, auth, certs
from taonet.attestation import Attestation
from taonet.crypto import Signer
from taonet.domain import Domain
from taonet.provision import ERROR_INVALID_ATTESTATION, request_certificate
from taonet_services.domain_service import AuditLog
from taonet_services.domain_service._audit import MAX_FIELD_CHARS, SUMMARY_CODE
from taonet_services.domain_service._service import ERROR_RATE_LIMITED, MAX_REQUEST
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.services.flood import audit_bytes, flood, flood_request


async def start_domain_service(domain: Domain, tmp_path: Path, *, stderr: int) -> trio.Process:
    """``taonet domain-service`` for ``domain`` on a port of its choosing; stdout piped."""
    password_file = tmp_path / "pw"
    password_file.write_bytes(PASSWORD + b"\n")
    return await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "taonet", "domain-service", "--domain", str(domain.path)),
            *("--listen", "127.0.0.1:0", "--password-file", str(password_file)),
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


async def listening_port(process: trio.Process) -> int:
    """The port the service says, in its first line on stdout, that it listens on."""
    assert process.stdout is not None
    line = b""
    while b"\n" not in line:
        chunk = await process.stdout.receive_some()
        assert chunk, "the domain service exited before listening"
        line += chunk
    match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", line)
    assert match, line
    return int(match.group(1))


async def test_domain_service_process(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    process = await start_domain_service(domain, tmp_path, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(60):
            port = await listening_port(process)
            name = host.name.extend(domain.policy_subprin)
            key = Signer.generate()
            att = await host.tao_for(name).attest(
                auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
            )
            program = await request_certificate(
                "127.0.0.1", port, domain.policy_cert, att, key.public_key_der()
            )
            assert program.principal == name
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    assert (domain.path / "audit.sqlite").exists()


async def test_flooded_service_process_keeps_its_log_and_audit_small(
    make_domain: MakeDomain, tmp_path: Path
) -> None:
    """The refusal flood against `taonet domain-service` itself: what it prints on
    stderr and adds to the audit log stays small, and the refusals it did not record
    one by one are summarized when it is stopped (Ctrl-C)."""
    domain = make_domain(guard="Liberal")
    audit = domain.path / "audit.sqlite"
    payload = flood_request(MAX_REQUEST - 200)
    process = await start_domain_service(domain, tmp_path, stderr=subprocess.PIPE)
    stderr = bytearray()
    try:
        with trio.fail_after(90):
            assert process.stdout is not None
            assert process.stderr is not None
            async with trio.open_nursery() as nursery:

                async def drain() -> None:
                    assert process.stderr is not None
                    while chunk := await process.stderr.receive_some():
                        stderr.extend(chunk)

                nursery.start_soon(drain)
                port = await listening_port(process)
                before = audit_bytes(audit)
                answers = await flood(port, domain.policy_cert, payload, 200)
                # 10 refusals in full, then rate limited (more in full only if the
                # flood outlasts the 10 s a client's bucket takes to earn one back).
                full = answers[ERROR_INVALID_ATTESTATION]
                assert full >= 10, answers
                assert answers[ERROR_RATE_LIMITED] > 0, answers
                process.send_signal(signal.SIGINT)
                await process.wait()  # its exit status is the CLI's business
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()
    with AuditLog.open(audit) as log:
        events = log.events()
    (summary,) = [e for e in events if e.reason_code == SUMMARY_CODE]
    assert summary.detail["count"] == answers[ERROR_RATE_LIMITED]
    assert len(events) == full + 1
    assert audit_bytes(audit) - before <= (full + 1) * 32 * 1024
    # Before the fix: 200 lines of 24 kB on stderr.
    lines = bytes(stderr).splitlines()
    assert len(stderr) < (full + 10) * 3 * 1024, len(stderr)
    assert max(len(line) for line in lines) < 2 * MAX_FIELD_CHARS + 512
    assert sum(b"cert_refused" in line for line in lines) == full
    assert sum(b"refusals_summarized" in line for line in lines) == 1


async def test_kill_9_during_issuance_keeps_every_returned_certificate(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    """`taonet domain-service` killed with SIGKILL while eight clients are getting
    certificates (commits shared between them): every certificate a client received
    is in the audit log, in full, and the log's chain still verifies."""
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    name = host.name.extend(domain.policy_subprin)
    pool: list[tuple[Attestation, bytes]] = []
    for _ in range(8):
        signer = Signer.generate()
        pool.append(
            (
                await host.tao_for(name).attest(
                    auth.Speaksfor(auth.key_principal(signer.public_key_der()), name)
                ),
                signer.public_key_der(),
            )
        )
    received: list[certs.ProgramCertificate] = []
    failures: list[BaseException] = []
    process = await start_domain_service(domain, tmp_path, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(90):
            port = await listening_port(process)

            async def client(att: Attestation, key: bytes) -> None:
                while process.returncode is None:
                    try:
                        program = await request_certificate(
                            "127.0.0.1", port, domain.policy_cert, att, key
                        )
                    except (TaoError, trio.BrokenResourceError) as exc:
                        failures.append(exc)
                        return
                    received.append(program)
                    if len(received) == 40:
                        process.kill()  # SIGKILL: no shutdown, no last checkpoint

            async with trio.open_nursery() as nursery:
                for att, key in pool:
                    nursery.start_soon(client, att, key)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    assert process.returncode == -signal.SIGKILL
    assert len(received) >= 40
    with AuditLog.open(domain.path / "audit.sqlite") as log:
        for program in received:
            event = log.issued(program.serial)
            assert event is not None, f"serial {program.serial} was returned but not recorded"
            assert event.principal == str(program.principal)
            assert (
                event.detail["key_hash_hex"] == hashlib.sha256(program.public_key_der).hexdigest()
            )
        recorded = {e.serial for e in log.events() if e.kind == "issued"}
        # Rows committed but never answered may exist (the kill came between); the
        # reverse never.
        assert {p.serial for p in received} <= recorded
        log.store.verify_sync()  # the chain links up to the last committed entry
