"""Connection floods on a Tao channel server (issue 8, item 5), as an attacker runs them.

The server is a real process (``channel_server.py``) on 127.0.0.1; attackers connect
from other loopback addresses (idle peers from 127.0.1.x, connections that never start
TLS from 127.0.0.3 or 127.0.0.2), the real client from 127.0.0.1.
The helpers here are used by ``test_limits.py``; run this module to print figures:

    python -m tests.channel.flood idle [--peers 1000] [--stalled 200] [--nofile 1024]
    python -m tests.channel.flood emfile [--nofile 64] [--clients 200] [--hold 35]
    python -m tests.channel.flood burst [--clients 300] [--options JSON]

``idle``: ``--peers`` clients finish TLS, read the server's verdict and then send
nothing; ``--stalled`` more open TCP and never start TLS; then a real client connects
and echoes one message. ``--idle-wait S`` then waits S seconds and counts the idle
peers the server has closed. ``emfile``: the server's soft ``RLIMIT_NOFILE`` is
lowered to ``--nofile``, ``--clients`` TCP connections exhaust it and are held for
``--hold`` seconds, then released, and a real client connects. ``--options`` passes
keyword arguments (JSON) to the server's ``serve_channels``. Each prints one JSON
object: counts, the real client's seconds to be served (or ``"timeout"``), and the
server's log in lines and bytes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
import trio

from taonet import TaoError, certs
from taonet.channel import ChannelIdentity, open_channel
from taonet.channel._tls import TLSStream

REPO = Path(__file__).resolve().parents[2]


class ServerLog:
    """The server process's stderr, line by line, as it arrives."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.nbytes = 0
        self._changed = trio.Event()

    def add(self, data: bytes | bytearray, partial: bytearray) -> None:
        self.nbytes += len(data)
        partial += data
        *whole, rest = bytes(partial).split(b"\n")
        partial[:] = rest
        if whole:
            self.lines += [line.decode("utf-8", "replace") for line in whole]
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, text: str, start: int = 0) -> str:
        """The first line from ``start`` on that contains ``text`` (waits for it)."""
        while True:
            for line in self.lines[start:]:
                if text in line:
                    return line
            await self._changed.wait()


def events(lines: list[str]) -> dict[str, int]:
    """How many log lines of each event (the word after the level), tracebacks apart."""
    counts: collections.Counter[str] = collections.Counter()
    for line in lines:
        if "] " in line:
            counts[line.split("] ", 1)[1].split(" ", 1)[0]] += 1
        elif line.startswith("Traceback"):
            counts["Traceback"] += 1
    return dict(counts)


class ServerProcess:
    def __init__(self, process: trio.Process, port: int, log: ServerLog) -> None:
        self.process = process
        self.port = port
        self.log = log


async def _pump(stream: trio.abc.ReceiveStream, log: ServerLog) -> None:
    partial = bytearray()
    while data := await stream.receive_some():
        log.add(data, partial)


@contextlib.asynccontextmanager
async def server_process(
    identity: ChannelIdentity, *, nofile: int | None = None, options: dict[str, Any] | None = None
) -> AsyncIterator[ServerProcess]:
    """Run ``channel_server.py`` serving as ``identity``; stop it on exit."""
    assert identity.signer is not None
    assert identity.certificate is not None
    given = {
        "policy": identity.anchor.der.hex(),
        "key": identity.signer.to_pkcs8_der().hex(),
        "cert": identity.certificate.der.hex(),
        "nofile": nofile,
        "options": options or {},
    }
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.channel.channel_server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    log = ServerLog()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, process.stderr, log)
            await process.stdin.send_all(json.dumps(given).encode() + b"\n")
            out = b""
            with trio.fail_after(30):
                while b"\n" not in out:
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        raise RuntimeError("server exited: " + "\n".join(log.lines[-20:]))
                    out += chunk
            port = int(out.split()[1])
            yield ServerProcess(process, port, log)
            await process.stdin.aclose()
            with trio.move_on_after(10):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def attacker_channel(
    port: int, identity: ChannelIdentity, local_address: str, *, seconds: float = 10.0
) -> TLSStream:
    """A peer that finishes TLS, reads the server's verdict, and then does nothing.

    Raises trio.BrokenResourceError if the server closes it first, TooSlowError on timeout.
    """
    tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)
    tls = TLSStream(
        tcp,
        identity.client_context(),
        server_side=False,
        server_hostname=certs.CHANNEL_HOSTNAME,
    )
    try:
        with trio.fail_after(seconds):
            await tls.do_handshake()
            verdict = await tls.receive_some(1)
        if verdict != b"\x00":
            raise trio.BrokenResourceError(f"not accepted: {verdict!r}")
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


async def open_many(
    port: int, identity: ChannelIdentity, n: int, local_address: str, *, at_once: int = 32
) -> tuple[list[TLSStream], dict[str, int]]:
    """Open ``n`` idle authenticated peers, ``at_once`` at a time; count the outcomes."""
    peers: list[TLSStream] = []
    outcome = {"accepted": 0, "refused": 0, "timeout": 0}
    limit = trio.CapacityLimiter(at_once)

    async def one() -> None:
        async with limit:
            try:
                peers.append(await attacker_channel(port, identity, local_address))
                outcome["accepted"] += 1
            except trio.TooSlowError:
                outcome["timeout"] += 1
            except (trio.BrokenResourceError, OSError):
                outcome["refused"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return peers, outcome


async def open_stalled(port: int, n: int, local_address: str) -> list[trio.SocketStream]:
    """``n`` TCP connections that never start TLS."""
    return [
        await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address) for _ in range(n)
    ]


async def closed_by_server(stream: trio.abc.Stream) -> bool:
    """Whether the server has closed ``stream`` (reads what is there, waits for nothing)."""
    with trio.move_on_after(0.5):
        try:
            while await stream.receive_some():
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return True
    return False


async def real_client(port: int, identity: ChannelIdentity, *, seconds: float = 10.0) -> float:
    """Seconds for a real client to connect, be accepted and echo a message (inf on timeout)."""
    start = time.perf_counter()
    try:
        with trio.fail_after(seconds):
            stream = await open_channel("127.0.0.1", port, identity, handshake_timeout=seconds)
            await stream.send_all(b"hello")
            got = b""
            while len(got) < 5:
                got += await stream.receive_some()
            await stream.aclose()
    except trio.TooSlowError:
        return math.inf
    return time.perf_counter() - start


# --- measurements --------------------------------------------------------------------


async def identities(tmp: str) -> tuple[ChannelIdentity, ChannelIdentity]:
    from taonet.crypto import KdfParams
    from taonet.domain import Domain, DomainTemplate
    from taonet.hosts import SoftHost
    from tests.channel.conftest import Programs
    from tests.conftest import PASSWORD

    kdf = KdfParams.for_tests()
    domain = Domain.create(Path(tmp) / "d", DomainTemplate(guard="Liberal"), PASSWORD, kdf=kdf)
    host = SoftHost.create(Path(tmp) / "h", PASSWORD, kdf=kdf)
    host.set_root_endorsement(domain.certify_host(domain.unlock(PASSWORD), host.public_key_der()))
    programs = Programs(domain, host)
    return await programs.identity(1), await programs.identity(2)


def _seconds(value: float) -> float | str:
    return "timeout" if math.isinf(value) else round(value, 3)


async def measure_idle(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server_id, client_id = await identities(tmp)
    options = json.loads(args.options)
    async with server_process(server_id, nofile=args.nofile, options=options) as server:
        start = time.perf_counter()
        peers, outcome = [], {"accepted": 0, "refused": 0, "timeout": 0}
        async with trio.open_nursery() as nursery:

            async def from_address(i: int) -> None:
                share = args.peers // args.addresses + (i < args.peers % args.addresses)
                got, counts = await open_many(server.port, client_id, share, f"127.0.1.{i + 1}")
                peers.extend(got)
                for k, v in counts.items():
                    outcome[k] += v

            for i in range(args.addresses):
                nursery.start_soon(from_address, i)
        flood_s = time.perf_counter() - start
        stalled = await open_stalled(server.port, args.stalled, "127.0.0.3")
        served: float | str
        try:
            served = _seconds(await real_client(server.port, client_id))
        except (TaoError, trio.BrokenResourceError, OSError) as exc:
            served = f"refused: {exc}"
        logged = events(server.log.lines)
        result: dict[str, Any] = {
            "peers": args.peers,
            "stalled": args.stalled,
            "addresses": args.addresses,
            "nofile": args.nofile,
            "options": options,
            "idle_peers": outcome,
            "flood_seconds": round(flood_s, 2),
            "real_client_seconds": served,
            "log_events_until_served": logged,
        }
        if args.idle_wait:
            await trio.sleep(args.idle_wait)
            async with trio.open_nursery() as nursery:
                closed: list[bool] = []

                async def check(stream: trio.abc.Stream) -> None:
                    closed.append(await closed_by_server(stream))

                for s in [*peers, *stalled]:
                    nursery.start_soon(check, s)
            result["after_seconds"] = args.idle_wait
            result["closed_by_server"] = sum(closed)
            result["still_open"] = len(closed) - sum(closed)
        for s in [*peers, *stalled]:
            await trio.aclose_forcefully(s)
        result["log_lines_until_served"] = sum(logged.values())
    return result


async def measure_emfile(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server_id, client_id = await identities(tmp)
    options = json.loads(args.options)
    async with server_process(server_id, nofile=args.nofile, options=options) as server:
        before = server.log.nbytes, len(server.log.lines)
        stalled = await open_stalled(server.port, args.clients, "127.0.0.2")
        await trio.sleep(args.hold)
        during = server.log.nbytes - before[0], len(server.log.lines) - before[1]
        logged = events(server.log.lines[before[1] :])
        for s in stalled:
            await s.aclose()
        served = await real_client(server.port, client_id, seconds=30)
    return {
        "nofile": args.nofile,
        "clients": args.clients,
        "hold_seconds": args.hold,
        "options": options,
        "log_bytes_while_exhausted": during[0],
        "log_lines_while_exhausted": during[1],
        "log_events_while_exhausted": logged,
        "real_client_seconds_after_release": _seconds(served),
    }


async def measure_burst(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server_id, client_id = await identities(tmp)
    options = json.loads(args.options)
    async with server_process(server_id, options=options) as server:
        times: list[float] = []
        failed: dict[str, int] = {}

        async def one() -> None:
            try:
                times.append(await real_client(server.port, client_id))
            except (TaoError, trio.BrokenResourceError, OSError) as exc:
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1

        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                nursery.start_soon(one)
    served = sorted(t for t in times if not math.isinf(t))
    return {
        "clients": args.clients,
        "options": options,
        "served": len(served),
        "timed_out": len(times) - len(served),
        "failed": failed,
        "median_seconds": round(served[len(served) // 2], 3) if served else None,
        "max_seconds": round(served[-1], 3) if served else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    idle = sub.add_parser("idle")
    idle.add_argument("--peers", type=int, default=1000)
    idle.add_argument("--stalled", type=int, default=200)
    idle.add_argument("--addresses", type=int, default=1)
    idle.add_argument("--nofile", type=int, default=1024)
    idle.add_argument("--idle-wait", type=float, default=0.0)
    idle.add_argument("--options", default="{}")
    emfile = sub.add_parser("emfile")
    emfile.add_argument("--nofile", type=int, default=64)
    emfile.add_argument("--clients", type=int, default=200)
    emfile.add_argument("--hold", type=float, default=35.0)
    emfile.add_argument("--options", default="{}")
    burst = sub.add_parser("burst")
    burst.add_argument("--clients", type=int, default=300)
    burst.add_argument("--options", default="{}")
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    measure = {"idle": measure_idle, "emfile": measure_emfile, "burst": measure_burst}[args.mode]
    print(json.dumps(trio.run(measure, args)))


if __name__ == "__main__":
    main()
