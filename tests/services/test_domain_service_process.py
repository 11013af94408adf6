"""`taonet domain-service` as a real subprocess, used by a real client."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trio

from taonet import auth
from taonet.crypto import Signer
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.provision import request_certificate
from tests.conftest import PASSWORD


async def test_domain_service_process(make_domain, make_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    domain: Domain = make_domain(guard="Liberal")
    host: SoftHost = make_host(domain)
    password_file = tmp_path / "pw"
    password_file.write_bytes(PASSWORD + b"\n")
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "taonet",
            "domain-service",
            "--domain",
            str(domain.path),
            "--listen",
            "127.0.0.1:0",
            "--password-file",
            str(password_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(60):
            assert process.stdout is not None
            line = b""
            while b"\n" not in line:
                chunk = await process.stdout.receive_some()
                assert chunk, "the domain service exited before listening"
                line += chunk
            match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", line)
            assert match, line
            port = int(match.group(1))
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
