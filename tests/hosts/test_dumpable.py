"""Hosted programs are not dumpable: no other process of their uid reaches into them.

The attack (review A1, F1): a hosted program runs as its caller's uid, and any other
process of that uid (another program of the caller, or a sibling hosted program)
took its Tao channel with ``pidfd_getfd(2)`` or by reopening ``/proc/PID/fd/N``, or
raised its core limit (``prlimit``) and made it dump core, and so acted under the
program's name (Unseal, GetSharedSecret). Each test starts a real program as uid
NOBODY (a root host running another user's program, and a host run by NOBODY
itself running its own), then repeats the attack from another process of uid NOBODY
and checks that every step is refused, and that the program still talks to its host.
On the previous code (a readable copy, the host's interpreter executed from its
readable file) every step succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet.hosts.linux._interpreters import check_interpreter
from taonet.hosts.linux._process import (
    HostChannel,
    PreparedProgram,
    Sandbox,
    prepare_program,
    signal_group,
    spawn_program,
)

TIMEOUT = 60
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs a root host")
NOBODY = 65534 if os.getuid() != 65534 else 65533
#: An interpreter every uid can run (the test's own may live under a private /root).
SYSTEM_PYTHON = "/usr/bin/python3"
needs_system_python = pytest.mark.skipif(
    not os.path.exists(SYSTEM_PYTHON), reason=f"{SYSTEM_PYTHON} is missing"
)
SLEEP = shutil.which("sleep") or "/bin/sleep"

#: Run as the attacker (uid NOBODY) with the program's pid and one of its channel
#: descriptors: every way in that the review used. Prints what each step gave.
ATTACK = r"""
import ctypes, errno, json, os, resource, sys
pid, fd = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
out = {}

def attempt(name, step):
    try:
        step()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))

def call(result):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

def pidfd_getfd():
    pidfd = os.pidfd_open(pid)
    try:
        os.close(call(libc.syscall(438, pidfd, fd, 0)))  # SYS_pidfd_getfd
    finally:
        os.close(pidfd)

def seize():
    call(libc.ptrace(0x4206, pid, None, None))  # PTRACE_SEIZE: does not stop it

attempt("pidfd_getfd", pidfd_getfd)
attempt("open_fd", lambda: os.close(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)))
attempt("list_fds", lambda: os.listdir(f"/proc/{pid}/fd"))
attempt("read_environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
attempt("ptrace", seize)
inf = resource.RLIM_INFINITY
attempt("raise_core_limit", lambda: resource.prlimit(pid, resource.RLIMIT_CORE, (inf, inf)))
print(json.dumps(out))
"""
REFUSED = {"EPERM", "EACCES"}

#: A script run by the host's interpreter: says it is ready over its channel, then
#: echoes what the host sends it.
TALKER = """#!/usr/bin/env python3
import os
spec = os.environ["CLOUDPROXY_TAO_HOST_SPEC"]
read, write = (int(n) for n in spec[spec.index("(") + 1 : -1].split(","))
os.write(write, b"ready")
os.write(write, b"echo " + os.read(read, 100))
"""


#: :data:`TALKER` in Go.
GO_TALKER = """package main

import (
	"os"
	"strconv"
	"strings"
)

func main() {
	spec := os.Getenv("CLOUDPROXY_TAO_HOST_SPEC")
	fds := strings.Split(spec[strings.Index(spec, "(")+1:len(spec)-1], ",")
	r, _ := strconv.Atoi(strings.TrimSpace(fds[0]))
	w, _ := strconv.Atoi(strings.TrimSpace(fds[1]))
	in, out := os.NewFile(uintptr(r), "in"), os.NewFile(uintptr(w), "out")
	out.Write([]byte("ready"))
	buf := make([]byte, 100)
	n, _ := in.Read(buf)
	out.Write(append([]byte("echo "), buf[:n]...))
}
"""


def go_build(source: str, binary: Path, work: Path) -> None:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            raise AssertionError("go is missing in CI (make system-deps installs it)")
        pytest.skip("go is not installed")
    build = work / "go-build"
    build.mkdir(exist_ok=True)
    (build / "main.go").write_text(source)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(build),
        "GOCACHE": str(build / "cache"),
        "GOPATH": str(build / "gopath"),
        "GOPROXY": "off",
        "GO111MODULE": "off",
        "CGO_ENABLED": "0",
    }
    result = subprocess.run(
        [go, "build", "-o", str(binary), "main.go"],
        cwd=build,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    binary.chmod(0o755)


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A directory any uid may pass through (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="taonet-test-dumpable-"))
    path.chmod(0o711)
    yield path
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def make_source(base: Path, kind: str) -> tuple[Path, str | None, list[str]]:
    """The program the caller starts: (path, entry, args)."""
    src = base / "src"
    src.mkdir(mode=0o755, exist_ok=True)
    src.chmod(0o755)
    if kind == "binary":  # a single binary the kernel executes (CloudProxy's Program)
        path = src / "sleeper"
        shutil.copyfile(SLEEP, path)
        path.chmod(0o755)
        return path, None, ["300"]
    if kind == "tree-binary":  # a program directory whose entry is a binary
        tree = src / "service"
        tree.mkdir(mode=0o755)
        shutil.copyfile(SLEEP, tree / "run")
        (tree / "run").chmod(0o755)
        (tree / "data.txt").write_text("readable data\n")
        (tree / "data.txt").chmod(0o644)
        return tree, "run", ["300"]
    if kind == "go":  # a Go binary, as the original CloudProxy's hosted programs
        path = src / "talker-go"
        go_build(GO_TALKER, path, base)
        return path, None, []
    assert kind == "script"
    path = src / "talker"
    path.write_text(TALKER)
    path.chmod(0o755)
    return path, None, []


async def attack(pid: int, fd: int) -> dict[str, Any]:
    """Run :data:`ATTACK` as uid NOBODY against ``pid``."""
    result = await trio.run_process(
        [SYSTEM_PYTHON, "-I", "-c", ATTACK, str(pid), str(fd)],
        cwd="/",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def assert_refused(outcome: dict[str, Any]) -> None:
    assert len(outcome) == 6, outcome
    assert set(outcome.values()) <= REFUSED, outcome


def interpreters() -> dict[str, Any]:
    return {"python3": check_interpreter("python3", SYSTEM_PYTHON, owner=os.geteuid())}


@needs_root
@needs_system_python
@pytest.mark.parametrize("kind", ["binary", "tree-binary", "script", "go"])
async def test_another_process_of_the_callers_uid_cannot_reach_into_a_program(
    base_dir: Path, kind: str
) -> None:
    await start_and_attack(base_dir, kind, "none")


@needs_root
@needs_system_python
async def test_in_bwrap_the_hosts_interpreter_copy_runs_and_is_not_dumpable(
    base_dir: Path,
) -> None:
    # The copy is bound over the interpreter inside the sandbox (bwrap cannot set
    # argv[0]): the program itself is not dumpable.
    if not shutil.which("bwrap"):
        if os.environ.get("CI"):
            raise AssertionError("bubblewrap is missing in CI")
        pytest.skip("bubblewrap is not installed")
    await start_and_attack(base_dir, "script", "bwrap")


#: Run as the attacker with pids: takes every descriptor it can from each and prints
#: the inodes of the pipes it got.
STEAL = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pipes = []
for pid in map(int, sys.argv[1:]):
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        continue
    for fd in range(256):
        got = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd
        if got >= 0:
            st = os.fstat(got)
            if (st.st_mode & 0o170000) == 0o010000:
                pipes.append(st.st_ino)
            os.close(got)
    os.close(pidfd)
print(json.dumps(pipes))
"""


@needs_root
@needs_system_python
async def test_in_bwrap_no_process_of_the_sandbox_gives_up_the_channel(base_dir: Path) -> None:
    # The sh that waits for bwrap held the channel's pipes, readable /bin/sh: dumpable.
    if not shutil.which("bwrap"):
        if os.environ.get("CI"):
            raise AssertionError("bubblewrap is missing in CI")
        pytest.skip("bubblewrap is not installed")
    source, _, args = make_source(base_dir, "script")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare_program(
            source, base_dir / "programs", uid=NOBODY, gid=NOBODY, interpreters=interpreters()
        )
        try:
            channel = HostChannel.open()
            async with channel:
                inodes = {os.fstat(fd).st_ino for fd in channel.child_fds}
                process = await spawn_program(
                    prepared,
                    args=args,
                    env={"PATH": "/usr/bin:/bin"},
                    cwd=None,
                    uid=NOBODY,
                    gid=NOBODY,
                    channel=channel,
                    sandbox=Sandbox(kind="bwrap"),
                )
                try:
                    stream = channel.host_stream()
                    assert await stream.receive_some() == b"ready"
                    pids = await process_tree(process.pid)
                    assert len(pids) >= 3  # sh, bwrap ..., the program
                    stolen = await trio.run_process(
                        [SYSTEM_PYTHON, "-I", "-c", STEAL, *map(str, pids)],
                        cwd="/",
                        user=NOBODY,
                        group=NOBODY,
                        extra_groups=[],
                        capture_stdout=True,
                    )
                    assert set(json.loads(stolen.stdout)).isdisjoint(inodes)
                    await stream.send_all(b"ping")
                    assert await stream.receive_some() == b"echo ping"
                finally:
                    if process.returncode is None:
                        await signal_group(process, 9)
                    await process.wait()
        finally:
            prepared.cleanup()


async def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        for task in os.listdir(f"/proc/{pid}/task"):
            text = await trio.Path(f"/proc/{pid}/task/{task}/children").read_text()
            pending += [int(n) for n in text.split()]
    return pids


async def start_and_attack(base_dir: Path, kind: str, sandbox: str) -> None:
    source, entry, args = make_source(base_dir, kind)
    with trio.fail_after(TIMEOUT):
        prepared = await prepare_program(
            source,
            base_dir / "programs",
            uid=NOBODY,
            gid=NOBODY,
            entry=entry,
            interpreters=interpreters(),
        )
        try:
            if kind != "script":  # the caller may run its copy but not read it
                cat = await trio.run_process(
                    ["cat", str(prepared.path)],
                    user=NOBODY,
                    group=NOBODY,
                    extra_groups=[],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                assert cat.returncode != 0
                assert b"Permission denied" in cat.stderr
            else:
                assert prepared.executable is not None
                assert stat.S_IMODE(os.stat(prepared.executable).st_mode) == 0o111
            talks = kind in ("script", "go")
            await run_and_attack(prepared, args, Sandbox(kind=sandbox), talks)
        finally:
            prepared.cleanup()


async def run_and_attack(
    prepared: PreparedProgram, args: list[str], sandbox: Sandbox, talks: bool
) -> None:
    channel = HostChannel.open()
    async with channel:
        process = await spawn_program(
            prepared,
            args=args,
            env={"PATH": "/usr/bin:/bin"},
            cwd=None,
            uid=NOBODY,
            gid=NOBODY,
            channel=channel,
            sandbox=sandbox,
        )
        try:
            stream = channel.host_stream()
            if talks:
                assert await stream.receive_some() == b"ready"
            pid = process.pid
            if sandbox.kind == "bwrap":
                pid = await sandboxed_program(pid)
            outcome = await attack(pid, channel.child_fds[0])
            assert_refused(outcome)
            assert process.returncode is None  # still running
            if talks:  # and still reaches its host
                await stream.send_all(b"ping")
                assert await stream.receive_some() == b"echo ping"
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                await signal_group(process, 9)
            await process.wait()


async def sandboxed_program(sandbox_pid: int) -> int:
    """The pid of the program bwrap runs under ``sandbox_pid`` (its deepest descendant)."""
    pid = sandbox_pid
    while True:
        children: list[int] = []
        for task in os.listdir(f"/proc/{pid}/task"):
            text = await trio.Path(f"/proc/{pid}/task/{task}/children").read_text()
            children += [int(n) for n in text.split()]
        if not children:
            return pid
        pid = children[-1]
        await trio.lowlevel.checkpoint()


async def read_json(stream: trio.abc.ReceiveStream, pending: bytearray) -> dict[str, Any]:
    """The next line of ``stream`` as JSON (``pending``: what was read past it)."""
    while b"\n" not in pending:
        chunk = await stream.receive_some()
        assert chunk, f"the host ended early: {bytes(pending)!r}"
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    result: dict[str, Any] = json.loads(line)
    return result


#: A host run by NOBODY (a non-root host): imports taonet as root, then becomes
#: NOBODY for good and starts its own program, as LinuxHost does.
NON_ROOT_HOST = r"""
import json, os, sys
from pathlib import Path
import trio
from taonet.hosts.linux._interpreters import check_interpreter
from taonet.hosts.linux._process import HostChannel, prepare_program, spawn_program

uid, base, source, entry = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] or None
args = sys.argv[5:]
os.setgroups([])
os.setgid(uid)
os.setuid(uid)

async def main():
    interpreters = {"python3": check_interpreter("python3", "/usr/bin/python3", owner=uid)}
    prepared = await prepare_program(
        source, base / "host" / "programs", uid=uid, gid=uid, entry=entry,
        interpreters=interpreters,
    )
    channel = HostChannel.open()
    process = await spawn_program(
        prepared, args=args, env={"PATH": "/usr/bin:/bin"}, cwd=None, uid=uid, gid=uid,
        channel=channel,
    )
    stream = channel.host_stream()
    talks = prepared.interpreter is not None
    ready = (await stream.receive_some()).decode() if talks else ""
    print(json.dumps({"pid": process.pid, "fd": channel.child_fds[0], "ready": ready}), flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)
    echo = ""
    if talks:
        await stream.send_all(b"ping")
        echo = (await stream.receive_some()).decode()
    else:
        process.kill()
    print(json.dumps({"echo": echo, "status": await process.wait()}), flush=True)

trio.run(main)
"""


@needs_root
@needs_system_python
@pytest.mark.parametrize("kind", ["binary", "tree-binary", "script"])
async def test_a_non_root_hosts_programs_are_not_dumpable_either(base_dir: Path, kind: str) -> None:
    # The host runs as NOBODY and so do its programs, which own their copies: the
    # copies are still execute-only (mode 0100, 0111 for the interpreter), which
    # their owner, not being root, may not read.
    source, entry, args = make_source(base_dir, kind)
    host_dir = base_dir / "host"
    host_dir.mkdir(mode=0o700)
    os.chown(host_dir, NOBODY, NOBODY)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await trio.lowlevel.open_process(
                [
                    *(sys.executable, "-c", NON_ROOT_HOST, str(NOBODY), str(base_dir)),
                    *(str(source), entry or "", *args),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert host.stdin is not None
            assert host.stdout is not None
            pending = bytearray()
            started = await read_json(host.stdout, pending)
            if kind == "script":
                assert started["ready"] == "ready"
            assert_refused(await attack(started["pid"], started["fd"]))
            await host.stdin.send_all(b"go\n")
            done = await read_json(host.stdout, pending)
            assert await host.wait() == 0
            nursery.cancel_scope.cancel()
    if kind == "script":
        assert done == {"echo": "echo ping", "status": 0}
