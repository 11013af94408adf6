"""``taonet secret-server --metrics`` and ``taonet domain-service --metrics`` as real
processes: real Tao channels to them, then ``GET /metrics`` on 127.0.0.1, and the
counters moved as the traffic says; no secret's name or principal in the exposition;
every log line of a connection carries its ``conn_id`` and its peer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from taonet import auth
from taonet.crypto import Signer
from taonet.provision import ERROR_INVALID_ATTESTATION, fetch_crl, request_certificate
from taonet.secrets import ErrorCode, SecretServiceError, connect
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.world import secret_world

SECRET = "/app/metrics-test-secret-name"
OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]


class Service:
    """A service process: its stdout lines as they come, its stderr in a file."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.lines: list[str] = []
        self._buffer = b""

    async def line(self, pattern: str) -> re.Match[str]:
        """The first stdout line matching ``pattern`` (read as they come)."""
        assert self.process.stdout is not None
        while True:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            chunk = await self.process.stdout.receive_some(65536)
            assert chunk, self.log.read_text()[-3000:]
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]

    async def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, wait; the JSON log events it wrote."""
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(20):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.process.stdout is not None:
            await self.process.stdout.aclose()
        assert self.process.returncode == 0, self.log.read_text()[-3000:]
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


async def start(argv: list[str], tmp_path: Path, name: str) -> Service:
    log = tmp_path / f"{name}.log"
    env = {**os.environ, "TAONET_LOG": "debug", "TAONET_LOG_FORMAT": "json"}
    with log.open("ab") as err:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "taonet", *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return Service(process, log)


async def scrape(
    port: int, host: str = "127.0.0.1"
) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """GET /metrics: the text, and each sample by (name, labels)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    text = body.decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_connection(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if "conn_id" in event:
            groups.setdefault(event["conn_id"], []).append(event)
    return groups


async def test_secret_server_metrics_and_connection_logs(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(120):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, start=False
        ) as world:
            password = tmp_path / "host-password"
            password.write_bytes(PASSWORD + b"\n")
            host, port = world.domain_service
            server = await start(
                [
                    *("secret-server", "--domain", str(world.domain.path)),
                    *("--state", str(tmp_path / "state"), "--listen", "127.0.0.1:0"),
                    *("--domain-service", f"{host}:{port}", "--soft-host", str(tmp_path / "host0")),
                    *("--password-file", str(password), "--metrics", "127.0.0.1:0"),
                ],
                tmp_path,
                "secret-server",
            )
            try:
                listen = int((await server.line(r"listening on 127\.0\.0\.1:(\d+) as ")).group(1))
                metrics_port = int(
                    (await server.line(r"^metrics on http://127\.0\.0\.1:(\d+)/metrics$")).group(1)
                )
                owner, stranger = await world.identity("owner"), await world.identity("stranger")
                async with connect(("127.0.0.1", listen), owner) as store:
                    await store.create(SECRET)
                    for _ in range(3):
                        await store.read(SECRET)
                    with pytest.raises(SecretServiceError) as refused:
                        await store.read("/app/no-such-name")
                    assert refused.value.code is ErrorCode.NOT_FOUND
                    async with connect(("127.0.0.1", listen), stranger) as other:
                        with pytest.raises(SecretServiceError) as refused:
                            await other.read(SECRET)
                        assert refused.value.code is ErrorCode.UNAUTHORIZED
                    # The first scrape: made now (one is served again for a second).
                    text, after = await scrape(metrics_port)
            finally:
                events = await server.stop()

    prefix = "taonet_secret_server"
    assert value(after, f"{prefix}_requests_total", operation="create", outcome="ok") == 1
    assert value(after, f"{prefix}_requests_total", operation="read", outcome="ok") == 3
    assert value(after, f"{prefix}_requests_total", operation="read", outcome="not_found") == 1
    assert value(after, f"{prefix}_requests_total", operation="read", outcome="unauthorized") == 1
    assert value(after, f"{prefix}_request_seconds_count", operation="read") == 5
    assert value(after, f"{prefix}_request_seconds_count", operation="create") == 1
    assert value(after, f"{prefix}_handshakes_total", outcome="ok") == 2
    assert value(after, f"{prefix}_handshakes_total", outcome="refused") == 0
    assert value(after, f"{prefix}_open_channels") >= 1  # the owner's, still open
    # Releases and the refusal, committed in batches (the create is in its own transaction).
    assert 1 <= value(after, f"{prefix}_audit_write_seconds_count") <= 4
    # No secret's name, no principal, in any label or anywhere in the exposition.
    assert "metrics-test-secret-name" not in text
    assert "no-such-name" not in text
    for who in (owner, stranger):
        assert who.certificate is not None
        principal = str(who.certificate.principal)
        assert principal not in text
        assert principal.split("Program([")[-1][:16] not in text

    # Every line of a connection carries its conn_id and its peer; two connections, two ids.
    created = next(e for e in events if e["event"] == "secret_created")
    denied = next(e for e in events if e["event"] == "secret_refused")
    assert created["conn_id"] != denied["conn_id"]
    groups = by_connection(events)
    owner_text = str(owner.certificate.principal) if owner.certificate else ""
    stranger_text = str(stranger.certificate.principal) if stranger.certificate else ""
    for conn_id, expected in ((created["conn_id"], owner_text), (denied["conn_id"], stranger_text)):
        lines = groups[conn_id]
        assert all(line["peer"] == expected for line in lines), lines
        assert len({line["remote"] for line in lines}) == 1
        assert re.fullmatch(r"[0-9a-f]{8}", conn_id)
    assert any(e["event"] == "metrics_listening" for e in events)


async def test_domain_service_metrics_and_connection_logs(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    password = tmp_path / "pw"
    password.write_bytes(PASSWORD + b"\n")
    metrics_host = "::1" if _ipv6() else "127.0.0.1"  # IPv6 loopback when there is one
    shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
    with trio.fail_after(120):
        service = await start(
            [
                *("domain-service", "--domain", str(domain.path), "--listen", "127.0.0.1:0"),
                *("--password-file", str(password), "--metrics", f"{shown}:0"),
            ],
            tmp_path,
            "domain-service",
        )
        try:
            port = int((await service.line(r"listening on 127\.0\.0\.1:(\d+)")).group(1))
            metrics_port = int(
                (
                    await service.line(rf"^metrics on http://{re.escape(shown)}:(\d+)/metrics$")
                ).group(1)
            )
            name = host.name.extend(domain.policy_subprin)
            key = Signer.generate()
            att = await host.tao_for(name).attest(
                auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
            )
            program = await request_certificate(
                "127.0.0.1", port, domain.policy_cert, att, key.public_key_der()
            )
            other = Signer.generate()  # an attestation for another key than the one asked
            with pytest.raises(Exception, match=ERROR_INVALID_ATTESTATION):
                await request_certificate(
                    "127.0.0.1", port, domain.policy_cert, att, other.public_key_der()
                )
            await fetch_crl("127.0.0.1", port, domain.policy_cert)
            text, samples = await scrape(metrics_port, metrics_host)
        finally:
            events = await service.stop()

    prefix = "taonet_domain_service"
    assert value(samples, f"{prefix}_requests_total", operation="certify", outcome="ok") == 1
    refused = value(
        samples, f"{prefix}_requests_total", operation="certify", outcome="invalid_attestation"
    )
    assert refused == 1
    assert value(samples, f"{prefix}_requests_total", operation="get_crl", outcome="ok") == 1
    assert value(samples, f"{prefix}_handshakes_total", outcome="ok") == 3
    assert value(samples, f"{prefix}_audit_write_seconds_count") == 1
    assert value(samples, f"{prefix}_request_seconds_count", operation="certify") == 2
    assert str(program.principal) not in text
    assert str(name) not in text

    issued = next(e for e in events if e["event"] == "cert_issued")
    denied = next(e for e in events if e["event"] == "cert_refused")
    assert issued["conn_id"] != denied["conn_id"]
    groups = by_connection(events)
    for conn_id in (issued["conn_id"], denied["conn_id"]):
        assert all(line["peer"] == "anonymous" for line in groups[conn_id])
        assert len({line["remote"] for line in groups[conn_id]}) == 1


def _ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
