"""``taonet domain-service`` and ``taonet host start --foreground`` log their start (with
what they listen on) and their stop, also on a real SIGTERM, and exit 0.

Once, SIGTERM to the domain service ended it without a word: an operator's log showed
a service that had vanished.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from tests.cli.cli_helpers import COMMAND_TIMEOUT, clean_env, isolated, make_domain, make_root_host


class Lines:
    """The lines a process writes to one pipe, read as they come (bounded)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[str] = []

    async def until(self, needle: str) -> str:
        """Read lines until one holds ``needle``; that line."""
        while True:
            for line in self.seen:
                if needle in line:
                    return line
            chunk = await self._stream.receive_some(65536)
            assert chunk, f"{needle!r} never came: {self.seen}"
            assert len(self._buffer) < 1 << 20
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.seen += [line.decode(errors="replace") for line in complete]

    async def rest(self) -> list[str]:
        while chunk := await self._stream.receive_some(65536):
            self._buffer += chunk
        self.seen += [line.decode(errors="replace") for line in self._buffer.split(b"\n") if line]
        self._buffer = b""
        return self.seen


async def terminate(argv: list[str], env: dict[str, str], ready: str) -> tuple[int, Lines, Lines]:
    """Start ``argv``; once stdout shows ``ready``, SIGTERM it; its status and lines."""
    with trio.fail_after(COMMAND_TIMEOUT):
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            out, err = Lines(proc.stdout), Lines(proc.stderr)
            await out.until(ready)
            proc.send_signal(signal.SIGTERM)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.rest)
                nursery.start_soon(err.rest)
            status = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return status, out, err


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def domain(tmp_path: Path) -> Path:
    return await make_domain(tmp_path)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
async def test_domain_service_logs_start_and_stop_on_sigterm(
    domain: Path, tmp_path: Path, listen: str
) -> None:
    if listen.startswith("[") and not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    argv = isolated(
        "domain-service", "--domain", str(domain), "--listen", listen,
        "--password-file", str(tmp_path / "pw"),
    )  # fmt: skip
    status, out, err = await terminate(argv, clean_env(TAONET_LOG="info"), "listening on")
    assert status == 0, (out.seen, err.seen)
    started = next(line for line in err.seen if "domain_service_started" in line)
    bound = out.seen[0].split(" listening on ")[1].split(" as ")[0]
    host = listen.rsplit(":", 1)[0]
    assert bound.startswith(host + ":")
    assert int(bound.rsplit(":", 1)[1]) > 0
    assert f"listen=['{bound}']" in started
    assert f"domain={domain}" in started
    stopped = [line for line in err.seen if "domain_service_stopped" in line]
    assert len(stopped) == 1
    assert "signal=SIGTERM" in stopped[0]
    assert out.seen[-1] == "domain service stopped (SIGTERM)"
    assert not any("Traceback" in line for line in err.seen)


async def test_domain_service_logs_as_json(domain: Path, tmp_path: Path) -> None:
    import json

    argv = isolated(
        "domain-service", "--domain", str(domain), "--listen", "127.0.0.1:0",
        "--password-file", str(tmp_path / "pw"),
    )  # fmt: skip
    env = clean_env(TAONET_LOG="info", TAONET_LOG_FORMAT="json")
    status, _, err = await terminate(argv, env, "listening on")
    assert status == 0
    events = [json.loads(line) for line in err.seen]
    by_name = {event["event"]: event for event in events}
    assert by_name["domain_service_started"]["listen"][0].startswith("127.0.0.1:")
    assert by_name["domain_service_stopped"]["signal"] == "SIGTERM"


async def test_host_start_logs_start_and_stop_on_sigterm(tmp_path: Path) -> None:
    env = await make_root_host(tmp_path)
    env["TAONET_LOG"] = "info"
    argv = isolated("host", "start", "--foreground", "--password-file", str(tmp_path / "pw"))
    status, out, err = await terminate(argv, env, "serving")
    assert status == 0, (out.seen, err.seen)
    host_dir = Path(env["TAO_DOMAIN"]) / "linux_tao_host"
    started = next(line for line in err.seen if "linux_host_listening" in line)
    assert f"listen={host_dir / 'admin.sock'}" in started
    assert "kind=root" in started
    assert "name=key([" in started
    events = [line.split()[3] for line in err.seen if "] linux_host_" in line]
    assert events[-2:] == ["linux_host_stopping", "linux_host_stopped"]
    assert "signal=SIGTERM" in next(line for line in err.seen if "linux_host_stopping" in line)
    assert out.seen[-1] == "Linux host stopped (SIGTERM)"
    assert not any("Traceback" in line for line in err.seen)
    assert not (host_dir / "admin.sock").exists()
