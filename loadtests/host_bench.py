"""The Linux host's Tao RPC over pipes, against a bare framed echo in the same run.

A root :class:`~taonet.hosts.linux.LinuxHost` (Liberal guard, fresh keys) runs in this
process and starts a real hosted program (this interpreter running a small script).
That program measures, one call after another, for ``--seconds`` per phase:

* ``echo_64``: a bare framed echo of 64 bytes, over a pipe pair to this process
  (its stdin and stdout, passed to the host as file descriptors), answered by a
  :class:`~taonet.hosts.MessageStream` echo loop on the host's event loop;
* ``get_tao_name``: ``Tao.GetTaoName`` over the host's pipe channel;
* ``echo_1k``: the same echo with 1 KiB;
* ``seal_unseal_1k``: ``Tao.Seal`` of 1 KiB, then ``Tao.Unseal`` of the result.

Phases alternate within each round, so load changes hit baseline and subject alike.
Each ratio is the median of the per-round ratios: ``get_tao_name_ratio_vs_echo`` is
GetTaoName calls/s over 64-byte echoes/s; ``seal_unseal_ratio_vs_echo`` is
Seal+Unseal pairs/s over 1 KiB echoes/s (a pair is two RPC round trips, an echo one).

Start-to-first-RPC latency: from the admin request to start a program until that
program has the answer to its first Tao call (GetTaoName) and says so with one byte
on its stdout, against the same interpreter started as a bare subprocess that
imports the same modules and writes one byte (``first_rpc_ratio_vs_bare_start``).
Both are timed here, to a byte read from a pipe; the host carries no timing hooks.
Medians over ``--launches``.

Prints a table, then as its last line one JSON object with the figures.

    python loadtests/host_bench.py [--quick] [--seconds S] [--rounds N] [--launches N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from taonet.crypto import KdfParams
from taonet.hosts import MessageStream
from taonet.hosts.linux import AdminClient, LinuxHost, LinuxHostConfig

PASSWORD = b"bench"
IO_TIMEOUT = 120.0

CHILD = r"""
import json, os, sys, time
import trio
from taonet.hosts import MessageStream, parent

PHASES = ("echo_64", "get_tao_name", "echo_1k", "seal_unseal_1k")

async def main(seconds, rounds):
    echo = MessageStream(trio.StapledStream(trio.lowlevel.FdStream(os.dup(1)),
                                            trio.lowlevel.FdStream(os.dup(0))))
    small, kib = b"x" * 64, os.urandom(1024)
    results = {phase: [] for phase in PHASES}
    async with parent() as tao:
        async def one(phase):
            if phase == "echo_64":
                await echo.send_message(small); await echo.receive_message()
            elif phase == "echo_1k":
                await echo.send_message(kib); await echo.receive_message()
            elif phase == "get_tao_name":
                await tao.get_tao_name()
            else:
                data, _ = await tao.unseal(await tao.seal(kib))
                assert data == kib
        for _ in range(rounds):
            for phase in PHASES:
                for _ in range(50):  # warm up
                    await one(phase)
                n, start = 0, time.perf_counter()
                deadline = start + seconds
                while True:
                    await one(phase)
                    n += 1
                    if n % 16 == 0 and time.perf_counter() >= deadline:
                        break
                results[phase].append(n / (time.perf_counter() - start))
    await echo.aclose()
    print(json.dumps(results), file=sys.stderr, flush=True)

trio.run(main, float(sys.argv[1]), int(sys.argv[2]))
"""

FIRST_RPC = r"""
import os, sys
import trio
from taonet.hosts import parent

async def main():
    async with parent() as tao:
        await tao.get_tao_name()
        os.write(1, b"!")
        await trio.to_thread.run_sync(sys.stdin.readline)

trio.run(main)
"""

BARE = r"""
import os, sys
import trio
import taonet.hosts
os.write(1, b"!")
"""


def _script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


async def _read_all(fd: int) -> bytes:
    data = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def _echo(stream: MessageStream) -> None:
    async with stream:
        while True:
            try:
                message = await stream.receive_message()
            except (trio.EndOfChannel, trio.BrokenResourceError):
                return
            await stream.send_message(message)


async def measure_rpc(
    host: LinuxHost, directory: Path, seconds: float, rounds: int
) -> dict[str, list[float]]:
    child = _script(directory, "rpc_child", CHILD)
    to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
    from_child_r, from_child_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    echo = MessageStream(
        trio.StapledStream(trio.lowlevel.FdStream(to_child_w), trio.lowlevel.FdStream(from_child_r))
    )
    async with AdminClient.connect(host.socket_path) as admin, trio.open_nursery() as nursery:
        nursery.start_soon(_echo, echo)
        try:
            info = await admin.start(
                str(child),
                [str(seconds), str(rounds)],
                env={"PATH": os.environ.get("PATH", "")},
                stdin=to_child_r,
                stdout=from_child_w,
                stderr=err_w,
            )
        finally:
            for fd in (to_child_r, from_child_w, err_w):
                os.close(fd)
        output = await _read_all(err_r)
        done = await admin.wait(str(info.pid))
    if done.exit_status != 0:
        raise SystemExit(f"the benchmark program failed:\n{output.decode(errors='replace')}")
    results: dict[str, list[float]] = json.loads(output.decode().strip().splitlines()[-1])
    return results


async def measure_first_rpc(host: LinuxHost, directory: Path, launches: int) -> list[float]:
    """Milliseconds from the start request to the program's first answered Tao call."""
    child = _script(directory, "first_rpc_child", FIRST_RPC)
    latencies = []
    async with AdminClient.connect(host.socket_path) as admin:
        for _ in range(launches):
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
            start = time.perf_counter_ns()
            try:
                info = await admin.start(
                    str(child),
                    [],
                    env={"PATH": os.environ.get("PATH", "")},
                    stdin=stdin_r,
                    stdout=stdout_w,
                )
            finally:
                os.close(stdin_r)
                os.close(stdout_w)
            async with trio.lowlevel.FdStream(stdout_r) as stdout:
                if await stdout.receive_some(1) != b"!":
                    raise SystemExit("the first-RPC program failed before its first call")
                latencies.append((time.perf_counter_ns() - start) / 1e6)
            os.close(stdin_w)
            await admin.wait(str(info.pid))
    return latencies


async def measure_bare_start(directory: Path, launches: int) -> list[float]:
    script = _script(directory, "bare_child", BARE)
    latencies = []
    for _ in range(launches):
        start = time.perf_counter_ns()
        process = await trio.lowlevel.open_process([str(script)], stdout=subprocess.PIPE)
        assert process.stdout is not None
        await process.stdout.receive_some(1)
        latencies.append((time.perf_counter_ns() - start) / 1e6)
        await process.wait()
        await process.stdout.aclose()
    return latencies


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="taonet-bench-") as tmp:
        directory = Path(tmp)
        LinuxHost.init(
            directory / "host",
            LinuxHostConfig(kind="root", guard="Liberal"),
            password=PASSWORD,
            kdf=KdfParams.for_tests(),
        )
        host = await LinuxHost.open(directory / "host", password=PASSWORD)
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            with trio.fail_after(IO_TIMEOUT + args.seconds * args.rounds * 4):
                rates = await measure_rpc(host, directory, args.seconds, args.rounds)
            first_rpc: list[float] = []
            bare: list[float] = []
            with trio.fail_after(IO_TIMEOUT + args.launches * 10):
                for _ in range(args.launches):  # alternate subject and baseline
                    first_rpc += await measure_first_rpc(host, directory, 1)
                    bare += await measure_bare_start(directory, 1)
            await host.stop()
    name_ratios = [a / b for a, b in zip(rates["get_tao_name"], rates["echo_64"], strict=True)]
    seal_ratios = [a / b for a, b in zip(rates["seal_unseal_1k"], rates["echo_1k"], strict=True)]
    med = {phase: statistics.median(values) for phase, values in rates.items()}
    return {
        "echo_64_per_s": round(med["echo_64"]),
        "get_tao_name_per_s": round(med["get_tao_name"]),
        "echo_1k_per_s": round(med["echo_1k"]),
        "seal_unseal_1k_pairs_per_s": round(med["seal_unseal_1k"]),
        "get_tao_name_ratio_vs_echo": round(statistics.median(name_ratios), 3),
        "seal_unseal_ratio_vs_echo": round(statistics.median(seal_ratios), 3),
        "first_rpc_ms": round(statistics.median(first_rpc), 2),
        "bare_start_ms": round(statistics.median(bare), 2),
        "first_rpc_ratio_vs_bare_start": round(
            statistics.median(first_rpc) / statistics.median(bare), 3
        ),
        "rounds": args.rounds,
        "seconds_per_phase": args.seconds,
        "launches": args.launches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--launches", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.launches = 0.5, 3, 8
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = trio.run(run, args)
    print(f"{'phase':<26}{'per second':>12}")
    for key in (
        "echo_64_per_s",
        "get_tao_name_per_s",
        "echo_1k_per_s",
        "seal_unseal_1k_pairs_per_s",
    ):
        print(f"{key:<26}{result[key]:>12}")
    print(f"GetTaoName / 64 B echo:   {result['get_tao_name_ratio_vs_echo']}")
    print(f"Seal+Unseal / 1 KiB echo: {result['seal_unseal_ratio_vs_echo']}")
    print(
        f"start to first RPC {result['first_rpc_ms']} ms; bare start to first byte "
        f"{result['bare_start_ms']} ms (ratio {result['first_rpc_ratio_vs_bare_start']})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
