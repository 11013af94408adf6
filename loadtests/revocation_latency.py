"""Seconds from ``taonet domain revoke`` to the revoked peer's open channel being closed.

Everything is real: a fresh domain (Liberal guard) and certified soft host, the
domain service as a ``taonet domain-service`` process, a channel server in this
process with a :class:`taonet.provision.RevocationWatcher`, and for each round a
client with a fresh certificate from the service holding a channel open to it
(the server blocked reading from it). The operator's ``taonet domain revoke
SERIAL`` runs as a process; the clock starts when it is started (an operator
pressing Enter) and stops when the server's handler sees
:class:`taonet.channel.ChannelRevokedError`. The command's own run time (Python
start-up, unlocking the policy key, writing the log and ``crl.der``) is printed
too: the service may see the revocation before the command has exited.

Three settings of the server's watcher:

* ``watch``: the defaults (the ``DomainService.WatchCRL`` long poll, and a refresh
  every 300 s with 10 % jitter);
* ``demand``: no long poll; the server calls ``await watcher.refresh()`` right
  after the revocation (what an operator's hook or a signal handler would do);
* ``schedule``: no long poll, no call: only the schedule, every ``--interval``
  seconds (default 300, the default interval; ``--quick`` uses 10 so the run stays
  short: the wait is then uniform over about one interval, so the default's
  is about 300/10 times the figure printed).

Prints one line per round, then as its last line one JSON object with the median
and the largest figure of each setting.

    python loadtests/revocation_latency.py [--quick] [--rounds N] [--interval S]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog
import trio

from taonet import auth
from taonet.channel import (
    ChannelIdentity,
    ChannelRevokedError,
    TaoStream,
    open_channel,
    serve_channels,
)
from taonet.crypto import KdfParams, Signer
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.provision import RevocationWatcher, request_certificate

HOST = "127.0.0.1"
PASSWORD = b"latency"
#: Upper bound on one round, whatever the setting.
ROUND_TIMEOUT = 900.0


class Lab:
    """The domain, its host, and the running domain service process."""

    def __init__(self, base: Path) -> None:
        kdf = KdfParams.for_tests()
        self.domain = Domain.create(
            base / "domain", DomainTemplate(guard="Liberal"), PASSWORD, kdf=kdf
        )
        self.host = SoftHost.create(base / "host", PASSWORD, kdf=kdf)
        self.host.set_root_endorsement(
            self.domain.certify_host(self.domain.unlock(PASSWORD), self.host.public_key_der())
        )
        self.password_file = base / "password"
        self.password_file.write_bytes(PASSWORD + b"\n")
        self.port = 0
        self.tag = 0

    def taonet(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "taonet", *args]

    async def start_service(self, nursery: trio.Nursery) -> trio.Process:
        process = await trio.lowlevel.open_process(
            self.taonet(
                *("domain-service", "--domain", str(self.domain.path)),
                *("--listen", f"{HOST}:0", "--password-file", str(self.password_file)),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        line = b""
        while b"\n" not in line:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError("the domain service exited before listening")
            line += chunk
        match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", line)
        if match is None:
            raise RuntimeError(f"unexpected first line {line!r}")
        self.port = int(match.group(1))
        return process

    async def identity(self) -> ChannelIdentity:
        """A fresh program certificate from the domain service."""
        self.tag += 1
        name = self.domain.program_name(self.tag.to_bytes(32, "big"), host=self.host.name)
        assert isinstance(name, auth.Prin)
        key = Signer.generate()
        att = await self.host.tao_for(name).attest(
            auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
        )
        program = await request_certificate(
            HOST, self.port, self.domain.policy_cert, att, key.public_key_der()
        )
        return ChannelIdentity(self.domain.policy_cert, signer=key, certificate=program.der)

    async def revoke(self, serial: int) -> None:
        """``taonet domain revoke SERIAL`` as an operator runs it."""
        await trio.run_process(
            self.taonet(
                *("domain", "revoke", str(serial), "--reason", "latency test"),
                *("--domain", str(self.domain.path), "--password-file", str(self.password_file)),
            ),
            stdout=subprocess.DEVNULL,
        )

    def watcher(self, setting: str, interval: float) -> RevocationWatcher:
        where = (HOST, self.port)
        if setting == "watch":
            return RevocationWatcher(self.domain.policy_cert, where)
        if setting == "demand":
            return RevocationWatcher(self.domain.policy_cert, where, watch=False)
        return RevocationWatcher(
            self.domain.policy_cert, where, watch=False, refresh_interval=interval
        )


async def one_round(lab: Lab, setting: str, interval: float) -> tuple[float, float]:
    """Seconds from the revoke command's start to the server closing the client's
    channel, and the seconds the command itself ran."""
    closed = trio.Event()
    closed_at = 0.0

    async def handler(stream: TaoStream) -> None:
        nonlocal closed_at
        try:
            while await stream.receive_some():
                pass
        except ChannelRevokedError:
            closed_at = time.perf_counter()
            closed.set()
            raise

    server_id = await lab.identity()
    client_id = await lab.identity()
    assert client_id.certificate is not None
    watcher = lab.watcher(setting, interval)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        listeners = await nursery.start(
            functools.partial(serve_channels, handler, 0, server_id, revocations=watcher)
        )
        port = int(listeners[0].socket.getsockname()[1])
        stream = await open_channel(HOST, port, client_id)
        await stream.wait_accepted()
        revoked_at = time.perf_counter()
        await lab.revoke(client_id.certificate.serial)
        command = time.perf_counter() - revoked_at
        if setting == "demand":
            await watcher.refresh()
        await closed.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return closed_at - revoked_at, command


async def run(base: Path, settings: list[str], rounds: int, interval: float) -> dict[str, object]:
    lab = Lab(base)
    figures: dict[str, list[float]] = {}
    commands: list[float] = []
    async with trio.open_nursery() as nursery:
        process = await lab.start_service(nursery)
        try:
            for setting in settings:
                for i in range(rounds):
                    with trio.fail_after(ROUND_TIMEOUT):
                        seconds, command = await one_round(lab, setting, interval)
                    figures.setdefault(setting, []).append(seconds)
                    commands.append(command)
                    print(
                        f"{setting:9s} round {i + 1}: closed {seconds:8.3f} s after the"
                        f" command started (the command ran {command:.3f} s)",
                        flush=True,
                    )
        finally:
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
            if process.stdout is not None:
                await process.stdout.aclose()
    out: dict[str, object] = {}
    for setting, values in figures.items():
        out[f"{setting}_median_s"] = round(statistics.median(values), 3)
        out[f"{setting}_max_s"] = round(max(values), 3)
    out["revoke_command_median_s"] = round(statistics.median(commands), 3)
    out |= {"rounds": rounds, "schedule_interval_s": interval}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--rounds", type=int, help="rounds per setting (median taken)")
    parser.add_argument(
        "--interval", type=float, help="the schedule setting's refresh interval (seconds)"
    )
    parser.add_argument(
        "--settings", default="watch,demand,schedule", help="comma-separated settings to run"
    )
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    interval = args.interval or (10.0 if args.quick else 300.0)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        cache_logger_on_first_use=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        figures = trio.run(run, Path(tmp), args.settings.split(","), rounds, interval)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
