"""TaoStream handshakes and bulk throughput, against plain mutual TLS in the same run.

Everything runs in this one process on 127.0.0.1 (client and server share one thread
and one event loop), with two real program identities issued by a fresh domain
(Liberal guard) through a certified soft host. Three subjects, each measured the
same way:

* ``tao``: :func:`taonet.channel.serve_channels` / :func:`taonet.channel.open_channel`;
* ``tao_crl``: the same with ``revocations=``, a :class:`taonet.channel.CRLSource` on
  each side holding a verified CRL of ``--crl-serials`` revoked serials (default
  1000): each handshake checks the peer's serial, and each channel is tracked for
  the sweep a new CRL would run (none arrives during the run). Its handshakes are
  measured with ``tao``'s, alternating blocks of 10 between the two over twice the
  slice, and its bulk transfers with ``tao``'s in the order tao, tao_crl, tao_crl,
  tao (each rate the mean of its two), so that both see the same machine load;
* ``trio_tls``: a plain ``trio.SSLStream`` pair with trio's defaults, using the very
  same ``ssl.SSLContext`` objects (``identity.server_context()`` /
  ``identity.client_context()``, ``server_hostname=CHANNEL_HOSTNAME``);
* ``asyncio_tls``: ``asyncio.start_server`` / ``asyncio.open_connection`` with the
  same contexts and asyncio's defaults, readers asking for 64 KiB at a time.

Handshakes: for a time slice, one connection after another: connect, TLS 1.3 mutual
handshake, the client waits for one byte from the server (TaoStream: the server's
verdict, ``wait_accepted()``; the baselines: a byte the server sends once its
handshake is done), then the client closes. Bulk: on one established connection
the client sends an 8-byte length and then ``--bulk-mib`` MiB in ``--chunk-kib``
KiB writes; the server reads with its stream's default read size
(``receive_some()``) and counts, and answers one byte when it has all of it; the
clock runs from the first write to that byte.

A round measures every subject once: the two trio subjects inside one ``trio.run``,
then asyncio inside one ``asyncio.run`` (after the trio parts), so baselines and
subject alternate and a change of machine load does not land on one side of a
ratio only. Rates are medians over the rounds; each ratio is the median of the
per-round ratios. Debug logging is filtered out, as in a deployment.

Prints a table, then as its last line one JSON object with every rate and the
ratios ``handshake_ratio_vs_trio_tls``, ``bulk_ratio_vs_trio_tls``,
``bulk_ratio_vs_asyncio_tls`` (and ``handshake_ratio_vs_asyncio_tls``), and the cost
of revocation checking: ``handshake_ratio_crl_vs_tao`` and ``bulk_ratio_crl_vs_tao``
(``tao_crl`` over ``tao``, per round, median).

    python loadtests/channel_bench.py [--quick] [--seconds S] [--bulk-mib N] [--crl-serials N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import ssl
import statistics
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from taonet import auth
from taonet.certs import CHANNEL_HOSTNAME, make_crl
from taonet.channel import ChannelIdentity, CRLSource, TaoStream, open_channel, serve_channels
from taonet.crypto import KdfParams, Signer
from taonet.domain import Domain, DomainTemplate, ProgramCertifier
from taonet.hosts import SoftHost

HOST = "127.0.0.1"
PASSWORD = b"bench"
#: Upper bound on handshakes in one slice, whatever the clock says.
MAX_HANDSHAKES = 100_000
#: Upper bound on any single connection or transfer.
IO_TIMEOUT = 60.0
_LEN = struct.Struct(">Q")


# --- identities -------------------------------------------------------------------


async def make_identities(
    tmp: str, crl_serials: int
) -> tuple[ChannelIdentity, ChannelIdentity, bytes]:
    """A server and a client identity: real program certificates from a fresh domain,
    and that domain's CRL revoking ``crl_serials`` other serials."""
    kdf = KdfParams.for_tests()
    domain = Domain.create(f"{tmp}/domain", DomainTemplate(guard="Liberal"), PASSWORD, kdf=kdf)
    host = SoftHost.create(f"{tmp}/host", PASSWORD, kdf=kdf)
    host.set_root_endorsement(domain.certify_host(domain.unlock(PASSWORD), host.public_key_der()))
    certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))

    async def identity(tag: int) -> ChannelIdentity:
        name = domain.program_name(bytes([tag]) * 32, host=host.name)
        assert isinstance(name, auth.Prin)
        key = Signer.generate()
        att = await host.tao_for(name).attest(
            auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
        )
        issued = certifier.certify(att.to_bytes(), key.public_key_der())
        return ChannelIdentity(domain.policy_cert, signer=key, certificate=issued.der)

    crl = make_crl(
        domain.unlock(PASSWORD),
        domain.policy_anchor,
        range(1_000_000, 1_000_000 + crl_serials),
        now_ns=time.time_ns(),
    )
    return await identity(1), await identity(2), crl


async def crl_source(server: ChannelIdentity, crl: bytes) -> CRLSource:
    source = CRLSource(server.anchor)
    await source.update(crl)
    return source


# --- the shared protocol after the handshake ----------------------------------------


async def trio_serve_body(stream: trio.abc.Stream) -> None:
    """Server side: read a length, count that many bytes, answer one byte; or see EOF."""
    buffer = b""
    while len(buffer) < _LEN.size:
        data = await stream.receive_some()
        if not data:
            return
        buffer += data
    (expected,) = _LEN.unpack_from(buffer)
    count = len(buffer) - _LEN.size
    while count < expected:
        data = await stream.receive_some()
        if not data:
            raise trio.BrokenResourceError("the client left before sending everything")
        count += len(data)
    await stream.send_all(b"\x01")
    while await stream.receive_some():  # until the client closes
        pass


async def trio_bulk(stream: trio.abc.Stream, total: int, chunk: int) -> float:
    """Client side of a bulk transfer; returns the seconds it took."""
    block = bytes(chunk)
    start = time.perf_counter()
    await stream.send_all(_LEN.pack(total))
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        await stream.send_all(block if n == chunk else block[:n])
        sent += n
    ack = await stream.receive_some(1)
    elapsed = time.perf_counter() - start
    if ack != b"\x01":
        raise RuntimeError(f"unexpected answer {ack!r}")
    return elapsed


# --- trio subjects -----------------------------------------------------------------


async def start_tao_server(
    nursery: trio.Nursery, server: ChannelIdentity, revocations: CRLSource | None = None
) -> int:
    listeners = await nursery.start(
        functools.partial(serve_channels, trio_serve_body, 0, server, revocations=revocations)
    )
    return int(listeners[0].socket.getsockname()[1])


async def start_trio_tls_server(nursery: trio.Nursery, server: ChannelIdentity) -> int:
    context = server.server_context()

    async def serve_one(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, context, server_side=True)
        try:
            await stream.do_handshake()
            await stream.send_all(b"\x00")
            await trio_serve_body(stream)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, serve_one, 0, host=HOST)  # type: ignore[arg-type]
    )
    return int(listeners[0].socket.getsockname()[1])


async def tao_connect(
    port: int, client: ChannelIdentity, revocations: CRLSource | None = None
) -> TaoStream:
    stream = await open_channel(HOST, port, client, revocations=revocations)
    await stream.wait_accepted()
    return stream


async def trio_tls_connect(port: int, client: ChannelIdentity) -> trio.SSLStream[Any]:
    tcp = await trio.open_tcp_stream(HOST, port)
    stream = trio.SSLStream(tcp, client.client_context(), server_hostname=CHANNEL_HOSTNAME)
    try:
        await stream.do_handshake()
        if await stream.receive_some(1) != b"\x00":
            raise RuntimeError("the server did not send its byte")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def trio_handshakes(
    connect: Callable[[], Awaitable[trio.abc.Stream]], seconds: float
) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while count < MAX_HANDSHAKES:
        with trio.fail_after(IO_TIMEOUT):
            stream = await connect()
            await stream.aclose()
        count += 1
        if time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - start)


async def paired_handshakes(
    first: Callable[[], Awaitable[trio.abc.Stream]],
    second: Callable[[], Awaitable[trio.abc.Stream]],
    seconds: float,
    block: int = 10,
) -> tuple[float, float]:
    """Handshakes per second of two subjects measured in alternating blocks."""
    counts, spent = [0, 0], [0.0, 0.0]
    deadline = time.perf_counter() + 2 * seconds
    turn = 0
    while sum(counts) < MAX_HANDSHAKES:
        connect = (first, second)[turn % 2]
        start = time.perf_counter()
        for _ in range(block):
            with trio.fail_after(IO_TIMEOUT):
                stream = await connect()
                await stream.aclose()
        spent[turn % 2] += time.perf_counter() - start
        counts[turn % 2] += block
        turn += 1
        if turn % 2 == 0 and time.perf_counter() >= deadline:
            break
    return counts[0] / spent[0], counts[1] / spent[1]


async def trio_bulk_rate(
    connect: Callable[[], Awaitable[trio.abc.Stream]], total: int, chunk: int
) -> float:
    with trio.fail_after(IO_TIMEOUT):
        stream = await connect()
        try:
            seconds = await trio_bulk(stream, total, chunk)
        finally:
            await stream.aclose()
    return total / seconds / 1e6


async def trio_round(
    server: ChannelIdentity,
    client: ChannelIdentity,
    crl: bytes,
    seconds: float,
    total: int,
    chunk: int,
    order: list[str],
) -> dict[str, float]:
    out: dict[str, float] = {}
    server_crl, client_crl = await crl_source(server, crl), await crl_source(client, crl)
    async with trio.open_nursery() as nursery:
        ports = {
            "tao": await start_tao_server(nursery, server),
            "tao_crl": await start_tao_server(nursery, server, server_crl),
            "trio_tls": await start_trio_tls_server(nursery, server),
        }
        connects: dict[str, Callable[[], Awaitable[trio.abc.Stream]]] = {
            "tao": functools.partial(tao_connect, ports["tao"], client),
            "tao_crl": functools.partial(tao_connect, ports["tao_crl"], client, client_crl),
            "trio_tls": functools.partial(trio_tls_connect, ports["trio_tls"], client),
        }
        for name in order:
            if name == "tao_crl":
                continue  # measured with tao
            if name == "tao":
                pair = (connects["tao"], connects["tao_crl"])
                if order.index("tao_crl") < order.index("tao"):
                    pair = pair[::-1]
                rates = await paired_handshakes(*pair, seconds)
                if order.index("tao_crl") < order.index("tao"):
                    rates = rates[::-1]
                out["tao_handshakes_per_s"], out["tao_crl_handshakes_per_s"] = rates
            else:
                out[f"{name}_handshakes_per_s"] = await trio_handshakes(connects[name], seconds)
        for name in order:
            if name == "tao_crl":
                continue  # measured with tao
            if name == "tao":
                abba = ("tao", "tao_crl", "tao_crl", "tao")
                bulk = [await trio_bulk_rate(connects[n], total, chunk) for n in abba]
                out["tao_bulk_mb_per_s"] = (bulk[0] + bulk[3]) / 2
                out["tao_crl_bulk_mb_per_s"] = (bulk[1] + bulk[2]) / 2
            else:
                out[f"{name}_bulk_mb_per_s"] = await trio_bulk_rate(connects[name], total, chunk)
        nursery.cancel_scope.cancel()
    return out


# --- asyncio subject ---------------------------------------------------------------

_ASYNCIO_READ = 64 * 1024


async def asyncio_serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"\x00")
        await writer.drain()
        header = await reader.readexactly(_LEN.size)
        (expected,) = _LEN.unpack(header)
        count = 0
        while count < expected:
            data = await reader.read(_ASYNCIO_READ)
            if not data:
                return
            count += len(data)
        writer.write(b"\x01")
        await writer.drain()
        while await reader.read(_ASYNCIO_READ):
            pass
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def asyncio_connect(
    port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=context, server_hostname=CHANNEL_HOSTNAME
    )
    if await reader.readexactly(1) != b"\x00":
        raise RuntimeError("the server did not send its byte")
    return reader, writer


async def asyncio_close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def asyncio_round(
    server: ChannelIdentity, client: ChannelIdentity, seconds: float, total: int, chunk: int
) -> dict[str, float]:
    srv = await asyncio.start_server(
        asyncio_serve_one, HOST, 0, ssl=server.server_context(), backlog=128
    )
    port = int(srv.sockets[0].getsockname()[1])
    context = client.client_context()
    try:
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while count < MAX_HANDSHAKES:
            async with asyncio.timeout(IO_TIMEOUT):
                _, writer = await asyncio_connect(port, context)
                await asyncio_close(writer)
            count += 1
            if time.perf_counter() >= deadline:
                break
        handshakes = count / (time.perf_counter() - start)

        async with asyncio.timeout(IO_TIMEOUT):
            reader, writer = await asyncio_connect(port, context)
            block = bytes(chunk)
            t0 = time.perf_counter()
            writer.write(_LEN.pack(total))
            sent = 0
            while sent < total:
                n = min(chunk, total - sent)
                writer.write(block if n == chunk else block[:n])
                await writer.drain()
                sent += n
            ack = await reader.readexactly(1)
            elapsed = time.perf_counter() - t0
            await asyncio_close(writer)
        if ack != b"\x01":
            raise RuntimeError(f"unexpected answer {ack!r}")
    finally:
        srv.close()
        await srv.wait_closed()
    return {
        "asyncio_tls_handshakes_per_s": handshakes,
        "asyncio_tls_bulk_mb_per_s": total / elapsed / 1e6,
    }


# --- driver ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run well under a minute")
    parser.add_argument("--seconds", type=float, help="handshake seconds per subject, all rounds")
    parser.add_argument("--bulk-mib", type=int, help="MiB sent per bulk measurement")
    parser.add_argument("--chunk-kib", type=int, default=64, help="KiB per client write")
    parser.add_argument("--rounds", type=int, help="alternating rounds (median taken)")
    parser.add_argument(
        "--crl-serials", type=int, default=1000, help="serials the tao_crl subject's CRL revokes"
    )
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    rounds = args.rounds or (5 if args.quick else 9)
    total = (args.bulk_mib or (32 if args.quick else 128)) * 1024 * 1024
    chunk = args.chunk_kib * 1024
    slice_s = seconds / rounds

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        server, client, crl = trio.run(make_identities, tmp, args.crl_serials)

    # Warm up every path once (imports, certificate caches, allocator).
    trio.run(trio_round, server, client, crl, 0.2, 1 << 20, chunk, ["tao", "tao_crl", "trio_tls"])
    asyncio.run(asyncio_round(server, client, 0.2, 1 << 20, chunk))

    samples: dict[str, list[float]] = {}
    for i in range(rounds):
        # Swap which trio subject goes first each round (tao and tao_crl too), then
        # run asyncio.
        tao = ["tao", "tao_crl"] if i % 2 == 0 else ["tao_crl", "tao"]
        order = [*tao, "trio_tls"] if (i // 2) % 2 == 0 else ["trio_tls", *tao]
        got = trio.run(trio_round, server, client, crl, slice_s, total, chunk, order)
        got |= asyncio.run(asyncio_round(server, client, slice_s, total, chunk))
        for name, value in got.items():
            samples.setdefault(name, []).append(value)
    results = {name: statistics.median(values) for name, values in sorted(samples.items())}

    hs = "handshakes_per_s"
    bulk = "bulk_mb_per_s"

    def ratio(subject: str, baseline: str) -> float:
        # Median of the per-round ratios: each compares measurements taken moments
        # apart, so a change of machine load between rounds cancels out.
        pairs = zip(samples[subject], samples[baseline], strict=True)
        return statistics.median(a / b for a, b in pairs)

    results["handshake_ratio_vs_trio_tls"] = ratio(f"tao_{hs}", f"trio_tls_{hs}")
    results["handshake_ratio_vs_asyncio_tls"] = ratio(f"tao_{hs}", f"asyncio_tls_{hs}")
    results["bulk_ratio_vs_trio_tls"] = ratio(f"tao_{bulk}", f"trio_tls_{bulk}")
    results["bulk_ratio_vs_asyncio_tls"] = ratio(f"tao_{bulk}", f"asyncio_tls_{bulk}")
    results["handshake_ratio_crl_vs_tao"] = ratio(f"tao_crl_{hs}", f"tao_{hs}")
    results["bulk_ratio_crl_vs_tao"] = ratio(f"tao_crl_{bulk}", f"tao_{bulk}")

    print(
        f"rounds {rounds}, bulk {total >> 20} MiB in {chunk >> 10} KiB writes,"
        f" tao_crl: a CRL of {args.crl_serials} serials"
    )
    print(f"{'subject':14s} {'handshakes/s':>14s} {'bulk MB/s':>12s}")
    for name in ("tao", "tao_crl", "trio_tls", "asyncio_tls"):
        print(f"{name:14s} {results[f'{name}_{hs}']:14.1f} {results[f'{name}_{bulk}']:12.1f}")
    for name, value in results.items():
        if "ratio" in name:
            print(f"{name:40s} {value:8.3f}")
    print(
        json.dumps(
            {k: round(v, 4) for k, v in results.items()}
            | {"rounds": rounds, "crl_serials": args.crl_serials}
        )
    )


if __name__ == "__main__":
    main()
