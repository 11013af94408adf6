"""The audit-flood attack on the domain service (issue 8, item 3), as an attacker runs it.

An anonymous client sends ``certify`` requests whose attestation is signed by its own
key but claims a huge speaker, so every request is refused and (before the fix) each
refusal wrote the claimed principal in full to the audit log. The helpers here are used
by ``test_domain_service_flood.py``; run this module to print the figures:

    python -m tests.services.flood [--requests 400] [--size 120000] [--addresses 1]

It starts the domain service in this process on 127.0.0.1 (real TCP, real TLS),
floods it from 127.0.0.2 (or from ``--addresses`` addresses 127.0.1.1, ...), and
prints one JSON object: the audit log's growth in bytes and rows, the bytes the
service logged, the seconds the flood took, and the answers the attacker got.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import tempfile
import time
from pathlib import Path

import trio

from taonet import ProtocolError, auth, certs
from taonet.attestation import attest
from taonet.channel import ChannelIdentity, Peer, TaoStream
from taonet.channel._tls import TLSStream
from taonet.crypto import Signer
from taonet.provision import OP_CERTIFY
from taonet.wire import NEED_DATA, Envelope, Response, Role, message_class, parse

AUDIT_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: The attacker's source address (the legitimate clients in the tests use 127.0.0.1).
ATTACKER = "127.0.0.2"


def audit_bytes(audit_path: Path) -> int:
    """Bytes the audit database occupies on disk, WAL and shared memory included."""
    total = 0
    for suffix in AUDIT_SUFFIXES:
        part = audit_path.with_name(audit_path.name + suffix)
        if part.exists():
            total += part.stat().st_size
    return total


def flood_request(size: int, *, marker: str = "A") -> bytes:
    """A serialized certify request body of about ``size`` bytes claiming a huge speaker.

    The attestation really is signed (by the attacker's own key) so it gets past the
    signature check; its speaker is not the signer's, so the service refuses it with a
    reason that quotes the speaker.
    """
    attacker = Signer.generate()
    program_key = Signer.generate()
    # The speaker's extension appears twice (speaker and delegator): half the budget each.
    filler = marker * max(1, (size - 600) // 2)
    speaker = auth.Prin("key", auth.Bytes(b"\x00" * 32)).extend(
        auth.SubPrin((auth.PrinExt("Program", (auth.Str(filler),)),))
    )
    att = attest(
        attacker,
        auth.Speaksfor(auth.key_principal(program_key.public_key_der()), speaker),
        speaker=speaker,
        now_ns=time.time_ns(),
    )
    request = message_class("DomainServiceRequest")(
        kind="certify", attestation=att.to_bytes(), program_key=program_key.public_key_der()
    )
    return bytes(request.SerializeToString())


async def open_from(
    local_address: str, port: int, policy_cert: bytes, *, host: str = "127.0.0.1"
) -> TaoStream:
    """An anonymous Tao channel to ``host:port`` from the source address ``local_address``."""
    identity = ChannelIdentity.anonymous(policy_cert)
    tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
    tls = TLSStream(
        tcp,
        identity.client_context(),
        server_side=False,
        server_hostname=certs.CHANNEL_HOSTNAME,
    )
    await tls.do_handshake()
    return TaoStream(tls, Peer(None, None), server_side=False)


async def exchange(stream: TaoStream, envelope: Envelope, op: str, body: bytes) -> str:
    """Send one request in the protorpc envelope; what came back (see :func:`flood`)."""
    for chunk in envelope.request(op, 1, body):
        await stream.send_all(chunk)
    try:
        while (event := envelope.next_event()) is NEED_DATA:
            envelope.receive_data(await stream.receive_some(64 * 1024))
    except ProtocolError as exc:  # the service hung up inside an answer
        raise trio.EndOfChannel from exc
    if not isinstance(event, Response):  # the end of the stream, between messages
        raise trio.EndOfChannel
    if event.error is not None:
        return type(event.error).__name__
    response = parse("DomainServiceResponse", event.body)
    if response.error_code:
        return str(response.error_code)
    return "crl" if response.HasField("crl") else "certificate"


async def flood(
    port: int,
    policy_cert: bytes,
    payload: bytes,
    count: int,
    *,
    op: str = OP_CERTIFY,
    local_address: str = ATTACKER,
) -> collections.Counter[str]:
    """Send ``payload`` as the body of ``op`` ``count`` times, in the protorpc envelope,
    reconnecting whenever the service hangs up.

    Returns how many answers of each error code came back (``"crl"`` or
    ``"certificate"`` for answers that are not errors, the kind, such as
    ``"CodecError"``, for an envelope error, ``"closed"`` when the service closed
    the connection without an answer).
    """
    answers: collections.Counter[str] = collections.Counter()
    stream: TaoStream | None = None
    envelope = Envelope(Role.CLIENT, body_limit=1 << 20, max_frame=1 << 20)
    try:
        for _ in range(count):
            if stream is None:
                stream = await open_from(local_address, port, policy_cert)
                envelope = Envelope(Role.CLIENT, body_limit=1 << 20, max_frame=1 << 20)
            try:
                answer = await exchange(stream, envelope, op, payload)
            except (trio.BrokenResourceError, trio.EndOfChannel, trio.ClosedResourceError):
                answers["closed"] += 1
                await stream.aclose()
                stream = None
                continue
            answers[answer] += 1
    finally:
        if stream is not None:
            await stream.aclose()
    return answers


async def _main(requests: int, size: int, addresses: int, tmp: Path) -> dict[str, object]:
    from taonet.crypto import KdfParams
    from taonet.domain import Domain, DomainTemplate
    from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService

    password = b"flood"
    domain = Domain.create(tmp / "d", DomainTemplate(), password, kdf=KdfParams.for_tests())
    service = DomainService.open(domain.path, password)
    audit = domain.path / AUDIT_FILE
    payload = flood_request(size)
    with service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            before = audit_bytes(audit)
            start = time.perf_counter()
            answers: collections.Counter[str] = collections.Counter()
            for i in range(addresses):
                share = requests // addresses + (i < requests % addresses)
                source = ATTACKER if addresses == 1 else f"127.0.{1 + i // 250}.{1 + i % 250}"
                answers += await flood(
                    port, domain.policy_cert, payload, share, local_address=source
                )
            seconds = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    after = audit_bytes(audit)
    with AuditLog.open(audit) as log:
        rows = len(log.events())
    return {
        "requests": requests,
        "addresses": addresses,
        "request_bytes": len(payload),
        "audit_growth_bytes": after - before,
        "audit_growth_per_request": round((after - before) / requests, 1),
        "audit_rows": rows,
        "seconds": round(seconds, 3),
        "answers": dict(answers),
    }


def main() -> None:
    import structlog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--size", type=int, default=120_000)
    parser.add_argument("--addresses", type=int, default=1, help="source addresses to use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "log"
        with log_path.open("w") as log_file:
            # The service's log lines, rendered as the CLI renders them, counted in bytes.
            structlog.configure(
                processors=[
                    structlog.processors.add_log_level,
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
                logger_factory=structlog.PrintLoggerFactory(file=log_file),
            )
            figures = trio.run(_main, args.requests, args.size, args.addresses, Path(tmp))
        figures["log_bytes"] = log_path.stat().st_size
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
