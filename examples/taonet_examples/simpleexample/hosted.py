"""Run simpleexample with every program hosted by a Linux Tao host.

``taonet demo --hosted``: a root Linux host (soft keys, certified by the domain's
policy key) runs in this process; through its admin socket it starts, as real child
processes, the domain service and the secret server (the ``taonet`` command:
``taonet domain-service`` and ``taonet secret-server``), simpleserver and
simpleclient (executable copies of their own source files, run by their ``#!``
line). Each program's name is the host's name extended with ``Program([sha256 of
the file])``; the guard lets exactly these three files execute. Their output comes
back over pipes passed to the host as file descriptors, and is printed prefixed with
the program's name.

The secret server runs hosted, like the others, rather than beside the host in this
process: it is a Tao program whose master key is sealed by its host, so the demo
shows it as one (its identity provisioned through the domain service, its key
unsealed by the Linux host on later runs). Being the ``taonet`` command, it has the
domain service's program name; simpleserver is told that principal and accepts no
other secret server. simpleserver gets its secret from it; after simpleclient has
the secret, the demo rotates it as the operator (a request signed by the policy
key, as ``taonet secret rotate`` sends) and waits for simpleserver to say its watch
brought the new epoch.

The first run initializes (domain, host, each program's certificate and sealed
state); later runs in the same directory unseal that state.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from taonet import AuthorizationError, ConfigError, HostError, auth
from taonet.crypto import KdfParams, Signer
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.files import atomic_write, read_file
from taonet.hosts.linux import AdminClient, LinuxHost, LinuxHostConfig
from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_examples.simpleexample.demo import (
    SECRET_SERVER_STATE,
    PolicyKey,
    demo_rules,
    rotate_as_operator,
)

__all__ = ["create_demo_domain", "demo_programs", "run_hosted_demo", "run_programs"]

_LISTENING = re.compile(rb"listening on ([0-9.]+):(\d+)")
_SERVING = re.compile(rb"serving Tao channels on ([0-9.]+):(\d+)")
# The principal runs to the end of the line: a TPM host's name holds a space (PCRs("..", "..")).
_SECRET_SERVER = re.compile(rb"secret server listening on ([0-9.]+):(\d+) as ([^\r\n]+)")
_SECRET = re.compile(rb"received the secret ([0-9a-f]+)")
#: Bound on each step of the demo (a stuck program fails the demo, not hangs it).
STEP_TIMEOUT = 60.0


def _absolute_path(path: str | None) -> str:
    """A search path without its empty or relative entries (each means "the current
    directory", which must not choose the programs or the interpreter the host runs)."""
    entries = [e for e in (path or os.defpath).split(os.pathsep) if os.path.isabs(e)]
    return os.pathsep.join(entries) or os.defpath


def _taonet_command() -> Path:
    """The ``taonet`` console script of this interpreter's environment.

    A console script puts its own directory first on ``sys.path``, never the current
    one, and its ``#!`` line names the interpreter by absolute path: started as a
    hosted program (whose ``PYTHON*`` variables the host drops) it runs the code that
    was measured, whatever directory it runs in.
    """
    beside = Path(sys.executable).parent / "taonet"
    found = (
        beside
        if beside.is_file()
        else shutil.which("taonet", path=_absolute_path(os.environ.get("PATH")))
    )
    if found is None:
        raise ConfigError("cannot find the taonet command to run the domain service")
    return Path(found).resolve()


#: Bound on the size of a program's source the demo copies.
_MAX_SOURCE = 1 << 20


def demo_programs(base: Path) -> tuple[Path, Path, Path, Path]:
    """The demo directory (created if needed) and the three programs, as absolute paths.

    The host runs a program by its path (its ``#!`` line names the interpreter) and
    measures that very file. An installed package's modules are not executable (a
    wheel keeps no mode bits), so the demo runs simpleserver and simpleclient from
    executable copies of their source in ``bin`` in the demo directory, rewritten at
    each run: byte for byte the modules, so their names (the hashes) are the same.
    """
    base = Path(base).resolve()
    programs = base / "bin"
    programs.mkdir(mode=0o755, parents=True, exist_ok=True)
    copies = []
    for module in (simpleserver, simpleclient):
        source = Path(module.__file__ or "")
        copy = programs / source.name
        atomic_write(copy, read_file(source, limit=_MAX_SOURCE), mode=0o755)
        copies.append(copy)
    return base, copies[0], copies[1], _taonet_command()


class _Output:
    """Reads a hosted program's output, prints it, and remembers it."""

    def __init__(self, label: str, say: Callable[[str], None]) -> None:
        self.label = label
        self.say = say
        self.seen = b""
        self.changed = trio.Event()
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)

    async def pump(self) -> None:
        stream = trio.lowlevel.FdStream(self.read_fd)
        pending = b""
        async with stream:
            while chunk := await stream.receive_some(65536):
                self.seen += chunk
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.say(f"[{self.label}] {line.decode(errors='replace')}")
                self.changed.set()
                self.changed = trio.Event()
        if pending:
            self.say(f"[{self.label}] {pending.decode(errors='replace')}")

    async def expect(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        with trio.fail_after(STEP_TIMEOUT):
            while (match := pattern.search(self.seen)) is None:
                await self.changed.wait()
        return match


def create_demo_domain(
    domain_dir: Path,
    name: str,
    programs: tuple[Path, Path, Path],
    password: bytes,
    *,
    kdf: KdfParams | None = None,
) -> Domain:
    """A new domain ``name`` in ``domain_dir`` with the demo's guard rules
    (:func:`demo_rules`) for its server and client; ``programs`` is (server, client,
    taonet command), the programs it lists."""
    server_path, client_path, taonet_path = programs
    return Domain.create(
        domain_dir,
        DomainTemplate(
            name=name,
            rules=demo_rules(
                program_subprin(measure_file(server_path)),
                program_subprin(measure_file(client_path)),
            ),
            programs=(server_path, client_path, taonet_path),
        ),
        password,
        kdf=kdf or KdfParams.default(),
    )


async def run_hosted_demo(
    base: Path, *, say: Callable[[str], None] = print, kdf: KdfParams | None = None
) -> bytes:
    """Run the hosted demo in ``base`` (created if needed); returns the secret the client got."""
    base, server_path, client_path, taonet_path = demo_programs(base)
    password_file = base / "demo-password"
    domain_dir, host_dir = base / "domain", base / "host"
    signer: Signer | None = None
    if not password_file.exists():
        say(f"== Setting up a domain and a root Linux host in {base}")
        base.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(16).encode()
        atomic_write(password_file, password + b"\n", mode=0o600)
        domain = create_demo_domain(
            domain_dir,
            "simpleexample-hosted",
            (server_path, client_path, taonet_path),
            password,
            kdf=kdf,
        )
        say(f"policy key:   {domain.policy_principal}")
        for rule in domain.guard.rules:  # type: ignore[attr-defined]
            say(f"guard rule:   {rule}")
        LinuxHost.init(
            host_dir,
            LinuxHostConfig(
                kind="root",
                domain=str(domain_dir),
                grace_period=2.0,
                # The programs' "#!/usr/bin/env python3" must find this environment's
                # python: the host sets PATH (a caller's PATH never reaches a program).
                program_path=f"{Path(sys.executable).parent}{os.pathsep}"
                f"{_absolute_path(os.environ.get('PATH'))}",
            ),
            password=password,
            kdf=kdf or KdfParams.default(),
            policy_signer=(signer := domain.unlock(password)),
        )
    password = password_file.read_bytes().strip()
    policy_key = PolicyKey(Domain.load(domain_dir), password, signer)
    host = await LinuxHost.open(host_dir, password=password)
    say(f"== Linux host {host.name} (root, certified by the policy key)")
    return await run_programs(
        host,
        base,
        domain_dir=domain_dir,
        password_file=password_file,
        policy_key=policy_key,
        programs=(server_path, client_path, taonet_path),
        say=say,
    )


async def run_programs(
    host: LinuxHost,
    base: Path,
    *,
    domain_dir: Path,
    password_file: Path,
    policy_key: PolicyKey,
    programs: tuple[Path, Path, Path],
    say: Callable[[str], None] = print,
) -> bytes:
    """Run the domain service, the secret server, simpleserver and simpleclient on
    ``host`` (opened, not yet running), rotate the secret, and stop the host; returns
    the secret the client got. ``programs``: simpleserver, simpleclient and the
    ``taonet`` command, as :func:`demo_programs` gives them."""
    server_path, client_path, taonet_path = programs
    state = base / "programs"
    state.mkdir(exist_ok=True)
    for label, path in (
        ("domain service", taonet_path),
        ("secret server", taonet_path),
        ("simpleserver", server_path),
        ("simpleclient", client_path),
    ):
        say(f"{label + ':':<16}{host.name.extend(program_subprin(measure_file(path)))}")

    env = {"TAONET_LOG": "warning", "HOME": os.environ.get("HOME", str(base))}
    common = ["--domain", str(domain_dir), "--state", str(state)]
    outputs = {
        name: _Output(name, say)
        for name in ("domain service", "secret server", "simpleserver", "simpleclient")
    }

    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        nursery.start_soon(policy_key.unlock)
        try:
            async with AdminClient.connect(host.socket_path) as admin:

                async def start(label: str, path: Path, args: list[str]) -> int:
                    out = outputs[label]
                    nursery.start_soon(out.pump)
                    try:
                        info = await admin.start(
                            str(path),
                            args,
                            cwd=str(base),
                            env=env,
                            stdout=out.write_fd,
                            stderr=out.write_fd,
                        )
                    except AuthorizationError as exc:
                        raise ConfigError(
                            f"{exc}. The domain in {base} was made for other versions of "
                            "the programs: remove that directory and run the demo again"
                        ) from None
                    finally:
                        os.close(out.write_fd)
                        out.write_fd = -1
                    say(f"== Started {label} as pid {info.pid}: {info.name}")
                    return info.pid

                await start(
                    "domain service",
                    taonet_path,
                    [
                        "domain-service",
                        "--domain",
                        str(domain_dir),
                        "--listen",
                        "127.0.0.1:0",
                        "--password-file",
                        str(password_file),
                    ],
                )
                m = await outputs["domain service"].expect(_LISTENING)
                ds = f"{m.group(1).decode()}:{m.group(2).decode()}"
                secret_pid = await start(
                    "secret server",
                    taonet_path,
                    [
                        "secret-server",
                        "--domain",
                        str(domain_dir),
                        "--state",
                        str(base / SECRET_SERVER_STATE),
                        "--listen",
                        "127.0.0.1:0",
                        "--domain-service",
                        ds,
                    ],
                )
                m = await outputs["secret server"].expect(_SECRET_SERVER)
                secret_server = (m.group(1).decode(), int(m.group(2)))
                secret_server_principal = auth.parse_prin(m.group(3).decode())
                server_pid = await start(
                    "simpleserver",
                    server_path,
                    [
                        *common,
                        "--domain-service",
                        ds,
                        "--secret-server",
                        f"{secret_server[0]}:{secret_server[1]}",
                        "--secret-server-principal",
                        str(secret_server_principal),
                    ],
                )
                m = await outputs["simpleserver"].expect(_SERVING)
                server = f"{m.group(1).decode()}:{m.group(2).decode()}"
                pid = await start(
                    "simpleclient",
                    client_path,
                    [*common, "--domain-service", ds, "--server", server],
                )
                with trio.fail_after(STEP_TIMEOUT):
                    done = await admin.wait(str(pid))
                if done.exit_status != 0:
                    raise HostError(f"simpleclient exited with status {done.exit_status}")
                secret = bytes.fromhex(
                    (await outputs["simpleclient"].expect(_SECRET)).group(1).decode()
                )
                say("== Rotation: the operator rotates simpleserver's secret; a watch tells it")
                name = simpleserver.SECRET_NAME
                say(f"[operator] taonet secret rotate {name}  (a request signed by the policy key)")
                with trio.fail_after(STEP_TIMEOUT):
                    new = await rotate_as_operator(
                        policy_key.domain.policy_cert,
                        await policy_key.signer(),
                        secret_server,
                        secret_server_principal,
                        name,
                    )
                say(f"[operator] rotated {new.name} to epoch {new.epoch}")
                watched = re.escape(f"watch: {name} rotated (epoch {new.epoch})".encode())
                await outputs["simpleserver"].expect(re.compile(watched))
                # Those that keep the CRL current from the domain service stop first:
                # the secret server, then its client simpleserver.
                for stopping in (secret_pid, server_pid):
                    await admin.stop(str(stopping))
                    with trio.fail_after(STEP_TIMEOUT):
                        await admin.wait(str(stopping))
        finally:
            for out in outputs.values():
                if out.write_fd >= 0:  # never started: nobody else will close these
                    os.close(out.write_fd)
                    os.close(out.read_fd)
            say("== Shutting the host down (its programs are stopped)")
            with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT):
                await host.stop(grace_period=2.0)
    say("== Done")
    return secret
