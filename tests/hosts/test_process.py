"""The Linux host's process factory: private copies, permission checks, real children.

Real files and real child processes. Tests that switch users need a root host
(they skip otherwise); the bubblewrap tests skip only when bwrap is missing outside
CI (in CI they run, and fail without it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio
from structlog.testing import capture_logs

import taonet
from taonet import AuthorizationError, ConfigError, HostError
from taonet.hosts import MessageStream
from taonet.hosts._parent import HOST_CHANNEL_TYPE, HOST_SPEC, HOST_TYPE
from taonet.hosts.linux._process import (
    _ACL_WARNED,
    HostChannel,
    PreparedProgram,
    Sandbox,
    check_directory_access,
    prepare_program,
    signal_group,
    spawn_program,
)
from taonet.hosts.linux._process import _encode_acl as encode_acl
from taonet.hosts.linux._process import _only_user_acl as only_user_acl

TIMEOUT = 60
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs a root host")
NOBODY = 65534 if os.getuid() != 65534 else 65533
ME = (os.geteuid(), os.getegid())
NO_SANDBOX = Sandbox()
#: What the test interpreter needs inside a sandbox (a checkout and its virtual
#: environment may live under /tmp, which the sandbox replaces with an empty one).
RUNTIME_PATHS = (sys.prefix, str(Path(taonet.__file__).resolve().parents[1]))
BWRAP = Sandbox(kind="bwrap", read_only=RUNTIME_PATHS)
needs_bwrap = pytest.mark.skipif(
    not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"),
    reason="bubblewrap is not installed (in CI this test runs, and fails)",
)

#: Talks over its pipe channel with taonet, then reports where it ran (as JSON).
CHANNEL_CHILD = f"""#!{sys.executable}
import json, os, sys
import trio
from taonet.hosts import MessageStream, open_host_channel

async def main():
    async with MessageStream(await open_host_channel()) as channel:
        await channel.send_message(b"hello from the child")
        reply = await channel.receive_message()
        await channel.send_message(b"got " + reply)
    try:
        with open("/taonet-probe", "w"):
            root_write = 0
    except OSError as exc:
        root_write = exc.errno
    with open("written", "w") as f:
        f.write("from the child")
    print(json.dumps({{
        "ids": [os.getuid(), os.getgid()],
        "tmp": sorted(os.listdir("/tmp")),
        "root_write": root_write,
    }}))

trio.run(main)
"""

#: The same in bash (for users who cannot reach the host's Python): echoes one
#: 9-byte frame back over the channel, then reports. (Not sh: dash redirects only
#: fds 0-9, and reopening /proc/self/fd/N of the host's pipe is refused to others.)
SHELL_CHANNEL_CHILD = """#!/bin/bash
fds=${CLOUDPROXY_TAO_HOST_SPEC#*(}
fds=${fds%)}
head -c 9 <&"${fds%%,*}" >&"${fds##*, }"
grep -E '^(Uid|Gid|Groups):' /proc/self/status
echo "tmp: $(ls -A /tmp | tr '\\n' ' ')"
touch "$1/probe" 2>&1
echo from the child > written && echo "cwd: written"
"""


def write_program(path: Path, text: str | bytes, mode: int = 0o755) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def exists(path: Path) -> bool:
    return path.exists()


def read_text(path: Path) -> str:
    return path.read_text()


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def temporary_dir(mode: int, prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A new directory with exactly ``mode`` (whatever the umask) for one test."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(mode)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def new_dir(path: Path, mode: int) -> Path:
    """``path`` created with exactly ``mode`` (whatever the umask)."""
    path.mkdir()
    path.chmod(mode)
    return path


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A directory any uid can traverse (pytest's tmp_path is private to its user)."""
    yield from temporary_dir(0o711, "taonet-test-process-")


@pytest.fixture
def src_dir(base_dir: Path) -> Path:
    """Where programs for other users live: every uid may search it."""
    return new_dir(base_dir / "src", 0o755)


@pytest.fixture
def programs_dir(base_dir: Path) -> Path:
    return base_dir / "programs"  # not created yet: prepare_program creates it


@pytest.fixture
def workdir(base_dir: Path) -> Path:
    """A working directory every user may write in."""
    return new_dir(base_dir / "work", 0o777)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory outside /tmp that every user may write in (on the host)."""
    yield from temporary_dir(0o777, "taonet-test-open-", "/var/tmp")


@pytest.fixture
def host_groups() -> Iterator[list[int]]:
    """Give this (root) test process supplementary groups a child must not inherit."""
    saved = os.getgroups()
    os.setgroups([4242, 4343])
    try:
        yield os.getgroups()
    finally:
        os.setgroups(saved)


async def prepare(source: Path, programs_dir: Path, **kwargs: object) -> PreparedProgram:
    ids = {"uid": ME[0], "gid": ME[1], **kwargs}
    return await prepare_program(source, programs_dir, **ids)  # type: ignore[arg-type]


async def spawn_mine(
    prepared: PreparedProgram,
    *,
    channel: HostChannel | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    sandbox: Sandbox = NO_SANDBOX,
) -> trio.Process:
    """Start ``prepared`` as this test's own user, with no arguments, environment or cwd."""
    return await spawn_program(
        prepared,
        args=[],
        env={},
        cwd=None,
        uid=ME[0],
        gid=ME[1],
        channel=channel,
        stdin=stdin,
        stdout=stdout,
        sandbox=sandbox,
    )


async def read_all(fd: int) -> bytes:
    chunks = []
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


@attrs.frozen
class Outcome:
    status: int
    out: str
    err: str
    talked: object = None


async def run(
    prepared: PreparedProgram,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    uid: int = ME[0],
    gid: int = ME[1],
    cwd: str | None = None,
    channel: HostChannel | None = None,
    talk: Callable[[trio.Process], Awaitable[object]] | None = None,
    sandbox: Sandbox = NO_SANDBOX,
) -> Outcome:
    """Run to completion, collecting stdout and stderr, while ``talk`` runs.

    If ``talk`` fails, the child's group is killed and the failure reported with
    the child's stderr.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        process = await spawn_program(
            prepared,
            args=args,
            env={} if env is None else env,
            cwd=cwd,
            uid=uid,
            gid=gid,
            channel=channel,
            stdout=out_w,
            stderr=err_w,
            sandbox=sandbox,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    output: dict[int, bytes] = {}
    failure: Exception | None = None
    talked: object = None

    async def collect(fd: int) -> None:
        output[fd] = await read_all(fd)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, out_r)
            nursery.start_soon(collect, err_r)
            if talk is not None:
                try:
                    talked = await talk(process)
                except Exception as exc:
                    failure = exc
                    await signal_group(process, signal.SIGKILL)
            status = await process.wait()
    finally:
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                await signal_group(process, signal.SIGKILL)
                await process.wait()
    err = output[err_r].decode()
    if failure is not None:
        raise AssertionError(f"talking to the child failed; its stderr:\n{err}") from failure
    return Outcome(status, output[out_r].decode(), err, talked)


#: POSIX ACL tags and the id of entries that have none (acl(5), posix_acl_xattr.h).
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def acl_of(path: Path, name: str = "system.posix_acl_access") -> list[tuple[int, int, int]] | None:
    """The (tag, perm, id) entries of ``path``'s ACL as the kernel reports them, or None."""
    try:
        data = os.getxattr(path, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    assert struct.unpack_from("<I", data) == (2,)
    assert len(data) % 8 == 4
    return [struct.unpack_from("<HHI", data, offset) for offset in range(4, len(data), 8)]


def acl(
    owner: int,
    group: int,
    mask: int,
    other: int,
    *,
    users: dict[int, int] | None = None,
    groups: dict[int, int] | None = None,
) -> list[tuple[int, int, int]]:
    """(tag, perm, id) entries in the kernel's order: the owner's, each named user's
    (``users`` maps uid to perm), the owning group's, each named group's, mask, other."""
    return [
        (USER_OBJ, owner, NO_ID),
        *((USER, perm, uid) for uid, perm in sorted((users or {}).items())),
        (GROUP_OBJ, group, NO_ID),
        *((GROUP, perm, gid) for gid, perm in sorted((groups or {}).items())),
        (MASK, mask, NO_ID),
        (OTHER, other, NO_ID),
    ]


def only_for(uid: int, owner: int, user: int) -> list[tuple[int, int, int]]:
    return acl(owner, 0, user, 0, users={uid: user})


def proc_status(text: str) -> dict[str, list[str]]:
    return {
        line.split(":")[0]: line.split(":", 1)[1].split()
        for line in text.splitlines()
        if line.split(":")[0] in ("Uid", "Gid", "Groups")
    }


# -- prepare_program ------------------------------------------------------------------


async def test_copy_is_measured_exactly(tmp_path: Path, programs_dir: Path) -> None:
    data = b"#!/bin/sh\nexit 0\n" + os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    source = write_program(tmp_path / "big-program", data)
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
    assert prepared.program_hash == hashlib.sha256(data).digest()
    assert prepared.source == str(source)
    assert prepared.path.read_bytes() == data
    assert prepared.path.name == "big-program"
    assert prepared.path.parent == prepared.directory
    assert prepared.directory.parent == programs_dir
    assert mode_of(prepared.path) == 0o500  # the host's own program: private
    assert prepared.path.stat().st_uid == os.geteuid()
    assert mode_of(prepared.directory) == 0o700
    assert acl_of(prepared.path) is None
    assert acl_of(prepared.directory) is None
    assert mode_of(programs_dir) == 0o711


async def test_each_preparation_gets_its_own_directory(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "prog", "#!/bin/sh\n")
    with trio.fail_after(TIMEOUT):
        first = await prepare(source, programs_dir)
        second = await prepare(source, programs_dir)
    assert first.directory != second.directory
    assert first.program_hash == second.program_hash


async def test_the_copy_runs_not_the_rewritten_source(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "prog", "#!/bin/sh\necho old program\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        new = b"#!/bin/sh\necho new program\n"
        source.write_bytes(new)  # in place
        result = await run(prepared)
        assert (result.status, result.out) == (0, "old program\n"), result.err
        replacement = write_program(tmp_path / "other", new)
        replacement.replace(source)  # and by rename
        result = await run(prepared)
    assert (result.status, result.out) == (0, "old program\n"), result.err
    assert prepared.program_hash != hashlib.sha256(new).digest()


def owned(path: Path) -> tuple[int, int]:
    """Give ``path`` an owner and group other than the caller's ids used below."""
    if ROOT:
        os.chown(path, 4242, 4343)
    st = path.stat()
    return st.st_uid, st.st_gid


@pytest.mark.parametrize(
    ("mode", "caller", "allowed"),
    [
        (0o755, "other", True),
        (0o700, "other", False),
        (0o711, "other", False),  # execute without read
        (0o744, "other", False),  # read without execute
        (0o750, "group", True),
        (0o750, "supplementary", True),
        (0o750, "other", False),
        (0o705, "group", False),  # the group's bits apply, not other's
        (0o500, "owner", True),
        (0o075, "owner", False),  # the owner's bits apply, not group's or other's
        (0o600, "root", False),  # root needs some execute bit
        (0o001, "root", True),
        (0o100, "root", True),
    ],
)
async def test_caller_permissions(
    src_dir: Path, programs_dir: Path, mode: int, caller: str, allowed: bool
) -> None:
    source = write_program(src_dir / "prog", "#!/bin/sh\n", mode)
    owner, group = owned(source)
    others = [n for n in (NOBODY, 4444, 4545) if n not in (owner, group)][:2]
    ids = {
        "other": (others[0], others[0], ()),
        "group": (others[0], group, ()),
        "supplementary": (others[0], others[1], (others[1], group)),
        "owner": (owner, others[0], ()),
        "root": (0, 0, ()),
    }[caller]
    uid, gid, groups = ids
    if caller == "owner" and owner == 0:
        pytest.skip("cannot give the file a non-root owner without root")
    with trio.fail_after(TIMEOUT):
        if allowed:
            prepared = await prepare_program(source, programs_dir, uid=uid, gid=gid, groups=groups)
            assert prepared.path.read_bytes() == b"#!/bin/sh\n"
        else:
            with pytest.raises(AuthorizationError, match="may not read and execute"):
                await prepare_program(source, programs_dir, uid=uid, gid=gid, groups=groups)
            assert not exists(programs_dir)  # refused before anything was created


async def test_private_root_program_refused_to_nobody(src_dir: Path, programs_dir: Path) -> None:
    source = write_program(src_dir / "prog", "#!/bin/sh\n", 0o700)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(AuthorizationError):
            await prepare_program(source, programs_dir, uid=NOBODY, gid=NOBODY)
        source.chmod(0o755)
        await prepare_program(source, programs_dir, uid=NOBODY, gid=NOBODY)


async def test_non_regular_files_refused(tmp_path: Path, programs_dir: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o777)  # opening it without a writer must not hang
    with trio.fail_after(TIMEOUT):
        # (A directory is a program directory now: tests/hosts/test_program_trees.py.)
        for path in (Path("/dev/null"), fifo):
            with pytest.raises(HostError, match="not a regular file"):
                await prepare(path, programs_dir)
        with pytest.raises(HostError, match="cannot open"):
            await prepare(tmp_path / "missing", programs_dir)
    assert not exists(programs_dir)


async def test_oversize_refused(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "prog", b"#!/bin/sh\n" + b"#" * 90)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(HostError, match="over the 99-byte limit"):
            await prepare(source, programs_dir, max_size=99)
        prepared = await prepare(source, programs_dir, max_size=100)
    assert len(prepared.path.read_bytes()) == 100
    assert listing(programs_dir) == [prepared.directory.name]  # nothing left by the refusal


async def test_programs_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    source = write_program(tmp_path / "prog", "#!/bin/sh\n")
    (tmp_path / "file").write_bytes(b"")
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="not a directory"):
        await prepare(source, tmp_path / "file")


async def test_cleanup_is_idempotent(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "prog", "#!/bin/sh\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
    assert exists(prepared.path)
    prepared.cleanup()
    assert not exists(prepared.directory)
    assert exists(programs_dir)
    prepared.cleanup()
    assert not exists(prepared.directory)


@pytest.fixture
def locked(base_dir: Path) -> Path:
    """A directory only its owner (the host's user) may search, with a program in it."""
    path = new_dir(base_dir / "locked", 0o700)
    write_program(path / "prog", "#!/bin/sh\necho locked\n")
    (path / "inner").mkdir(mode=0o755)
    return path


async def test_a_directory_on_the_way_must_be_searchable(
    locked: Path, src_dir: Path, programs_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(AuthorizationError, match=f"may not search the directory {locked} "):
            await prepare_program(locked / "prog", programs_dir, uid=NOBODY, gid=NOBODY)
        assert not exists(programs_dir)  # refused before anything was created
        (locked / "prog").rename(src_dir / "prog")  # the same file, where NOBODY may go
        prepared = await prepare_program(src_dir / "prog", programs_dir, uid=NOBODY, gid=NOBODY)
        assert prepared.path.read_bytes() == b"#!/bin/sh\necho locked\n"
        if ROOT:  # uid 0 is exempt from the directory checks
            (src_dir / "prog").rename(locked / "prog")
            await prepare_program(locked / "prog", programs_dir, uid=0, gid=0)


@pytest.mark.parametrize(
    ("searchable", "caller"),
    [(0o710, "group"), (0o710, "supplementary"), (0o710, "other"), (0o701, "group")],
)
@needs_root
async def test_directory_search_permission_by_class(
    locked: Path, programs_dir: Path, searchable: int, caller: str
) -> None:
    os.chown(locked, 4242, 4343)
    os.chmod(locked, searchable)
    uid, gid, groups = {
        "group": (NOBODY, 4343, ()),
        "supplementary": (NOBODY, NOBODY, (4343,)),
        "other": (NOBODY, NOBODY, ()),
    }[caller]
    allowed = searchable == 0o710 and caller != "other"  # the group's bits, not other's
    with trio.fail_after(TIMEOUT):
        if allowed:
            await prepare_program(locked / "prog", programs_dir, uid=uid, gid=gid, groups=groups)
        else:
            with pytest.raises(AuthorizationError, match="may not search"):
                await prepare_program(
                    locked / "prog", programs_dir, uid=uid, gid=gid, groups=groups
                )


async def test_links_are_followed_as_the_caller_would(
    base_dir: Path, locked: Path, src_dir: Path, programs_dir: Path
) -> None:
    target = write_program(src_dir / "real-name", "#!/bin/sh\necho target\n")
    (src_dir / "to-locked").symlink_to(locked / "prog")
    (src_dir / "relative").symlink_to("real-name")
    (src_dir / "absolute").symlink_to(src_dir / "chain")
    (src_dir / "chain").symlink_to("../src/./relative")
    (src_dir / "into-locked").symlink_to(locked / "inner")
    (locked / "out").symlink_to(target)
    (src_dir / "loop").symlink_to("loop")
    refused = {
        src_dir / "to-locked": "may not search",
        locked / "out": "may not search",  # the link is where the caller cannot look
        # '..' after a link is taken from where the link led, as the kernel does:
        # not lexically (that would be src_dir/real-name, which is allowed).
        Path(f"{src_dir}/into-locked/../../src/real-name"): "may not search",
        src_dir / "loop": "too many links",
        src_dir / "real-name" / "x": "is not a directory",
    }
    with trio.fail_after(TIMEOUT):
        for path, why in refused.items():
            with pytest.raises((AuthorizationError, HostError), match=why):
                await prepare_program(path, programs_dir, uid=NOBODY, gid=NOBODY)
        for path in (src_dir / "relative", src_dir / "absolute", Path(f"{src_dir}//./relative")):
            prepared = await prepare_program(path, programs_dir, uid=NOBODY, gid=NOBODY)
            assert prepared.program_hash == hashlib.sha256(target.read_bytes()).digest()
            assert prepared.path.name == "real-name"  # named after what was copied
            assert prepared.source == str(path)


# -- spawn_program --------------------------------------------------------------------


@needs_root
async def test_child_runs_as_uid_and_gid_without_groups(
    src_dir: Path, programs_dir: Path, host_groups: list[int]
) -> None:
    assert host_groups  # which the child must not inherit
    source = write_program(src_dir / "ids", "#!/bin/sh\ncat /proc/self/status\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        result = await run(prepared, uid=NOBODY, gid=NOBODY)
    assert result.status == 0, result.err
    assert proc_status(result.out) == {
        "Uid": [str(NOBODY)] * 4,  # real, effective, saved, filesystem
        "Gid": [str(NOBODY)] * 4,
        "Groups": [],
    }


@needs_root
async def test_uid_and_gid_are_set_independently(src_dir: Path, programs_dir: Path) -> None:
    source = write_program(src_dir / "ids", "#!/bin/sh\ncat /proc/self/status\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=4343)
        result = await run(prepared, uid=NOBODY, gid=4343)
    assert result.status == 0, result.err
    assert proc_status(result.out)["Uid"] == [str(NOBODY)] * 4
    assert proc_status(result.out)["Gid"] == ["4343"] * 4


@needs_root
async def test_a_non_root_host_cannot_switch_users() -> None:
    # The child drops root itself once its imports are done (the interpreter may
    # live where other users cannot reach it).
    child = """
import os, sys
from pathlib import Path
import trio
from taonet import HostError
from taonet.hosts.linux._process import PreparedProgram, spawn_program

me = int(sys.argv[1])
os.setgroups([])
os.setresgid(me, me, me)
os.setresuid(me, me, me)

async def main():
    prepared = PreparedProgram(Path("/bin/true"), Path("/nonexistent"), b"", "/bin/true")
    for uid, gid in ((0, 0), (me, 0)):
        try:
            await spawn_program(prepared, args=[], env={}, cwd=None, uid=uid, gid=gid, channel=None)
        except HostError as exc:
            print("refused:", exc)
    process = await spawn_program(prepared, args=[], env={}, cwd=None, uid=me, gid=me, channel=None)
    print("own ids:", await process.wait())

trio.run(main)
"""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-c", child, str(NOBODY)],
            cwd="/",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    refusal = f"refused: a host running as uid {NOBODY} (gid {NOBODY}) cannot start a program"
    assert result.stdout.decode().splitlines() == [
        f"{refusal} as uid 0 (gid 0)",
        f"{refusal} as uid {NOBODY} (gid 0)",
        "own ids: 0",
    ]


async def test_child_has_its_own_process_group(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "wait", "#!/bin/sh\nread line\n")
    r, w = os.pipe()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            process = await spawn_mine(prepared, stdin=r)
            assert os.getpgid(process.pid) == process.pid
            assert os.getpgid(process.pid) != os.getpgid(0)
        finally:
            os.close(r)
            os.close(w)  # EOF: the child's read ends, and so does it
        assert await process.wait() == 1


async def test_arguments_and_working_directory(
    tmp_path: Path, programs_dir: Path, workdir: Path
) -> None:
    source = write_program(
        tmp_path / "args", '#!/bin/sh\necho "$0"\nfor a; do echo "[$a]"; done\npwd\n'
    )
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        result = await run(prepared, args=["one", "two words", ""], cwd=str(workdir))
    assert result.status == 0, result.err
    assert result.out.splitlines() == [
        str(prepared.path),
        "[one]",
        "[two words]",
        "[]",
        str(workdir),
    ]


ENV_CHILD = f"""#!{sys.executable}
import sys
# What exec received (Python may add LC_CTYPE to os.environ).
sys.stdout.buffer.write(open("/proc/self/environ", "rb").read())
"""


def parse_environ(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split("\0") if item)


async def test_environment_is_exactly_env_plus_host_variables(
    tmp_path: Path, programs_dir: Path
) -> None:
    source = write_program(tmp_path / "env", ENV_CHILD)
    given = {"FOO": "bar", "EMPTY": "", HOST_SPEC: "tao::RPC+tao::FDMessageChannel(0, 1)"}
    channel = HostChannel.open()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            with_channel = await run(prepared, env={**given, HOST_TYPE: "root"}, channel=channel)
        finally:
            await channel.aclose()
        without_channel = await run(prepared, env={**given, HOST_CHANNEL_TYPE: "unix"})
    assert with_channel.status == 0, with_channel.err
    read, write = channel.child_fds
    assert channel.spec() == f"tao::RPC+tao::FDMessageChannel({read}, {write})"
    assert parse_environ(with_channel.out) == {
        "FOO": "bar",
        "EMPTY": "",
        HOST_TYPE: "stacked",
        HOST_CHANNEL_TYPE: "pipe",
        HOST_SPEC: channel.spec(),
    }
    assert without_channel.status == 0, without_channel.err
    assert parse_environ(without_channel.out) == {"FOO": "bar", "EMPTY": ""}


def conversation(channel: HostChannel) -> Callable[[trio.Process], Awaitable[list[bytes]]]:
    """The host's side of CHANNEL_CHILD's conversation, then EOF once it exits."""

    async def talk(process: trio.Process) -> list[bytes]:
        async with MessageStream(channel.host_stream()) as stream:
            hello = await stream.receive_message()
            await stream.send_message(b"ping")
            reply = await stream.receive_message()
            await process.wait()
            with pytest.raises(trio.EndOfChannel):
                await stream.receive_message()
        return [hello, reply]

    return talk


async def test_pipe_channel_works_both_ways(
    tmp_path: Path, programs_dir: Path, workdir: Path
) -> None:
    source = write_program(tmp_path / "child.py", CHANNEL_CHILD)
    channel = HostChannel.open()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            result = await run(
                prepared, channel=channel, talk=conversation(channel), cwd=str(workdir)
            )
        finally:
            await channel.aclose()
    assert result.status == 0, result.err
    assert result.talked == [b"hello from the child", b"got ping"]


async def test_host_sees_eof_when_the_child_exits(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "quiet", "#!/bin/sh\nexit 3\n")
    channel = HostChannel.open()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            process = await spawn_mine(prepared, channel=channel)
            stream = channel.host_stream()
            assert await stream.receive_some() == b""
            assert await process.wait() == 3
        finally:
            await channel.aclose()
    for fd in channel.child_fds:  # closed in the host by spawn_program
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


async def test_host_channel_bookkeeping() -> None:
    before = open_fds()
    channel = HostChannel.open()
    assert all(fd > 2 for fd in channel.child_fds)
    assert open_fds() == before + 4
    with trio.fail_after(TIMEOUT):
        channel.close_child_ends()
        channel.close_child_ends()
        assert open_fds() == before + 2
        channel.host_stream()
        with pytest.raises(trio.ClosedResourceError):
            channel.host_stream()
        await channel.aclose()
        await channel.aclose()
    assert open_fds() == before
    unused = HostChannel.open()
    unused.close()
    assert open_fds() == before


def process_state(pid: int) -> str | None:
    """The kernel's state letter for ``pid``, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


async def wait_gone(pidfd: int) -> None:
    """Until the process of ``pidfd`` has exited (the kernel then makes it readable,
    whoever its parent is); closes ``pidfd``."""
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def read_line(fd: int) -> bytes:
    line = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        while not line.endswith(b"\n"):
            chunk = await stream.receive_some(1)
            assert chunk, "EOF before a whole line"
            line += chunk
    return line


async def test_signal_group_reaches_grandchildren(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "tree", "#!/bin/sh\nsleep 100 &\necho $!\nsleep 100\n")
    r, w = os.pipe()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            process = await spawn_mine(prepared, stdout=w)
        finally:
            os.close(w)
        try:
            grandchild = int(await read_line(r))
            assert os.getpgid(grandchild) == process.pid
            # Held from while it runs: its pid cannot be reused under us.
            pidfd = os.pidfd_open(grandchild)
            assert process_state(grandchild) not in (None, "Z")
            assert await signal_group(process, signal.SIGTERM) is True
            assert await process.wait() == -signal.SIGTERM
            await wait_gone(pidfd)
            assert process_state(grandchild) in (None, "Z")
        finally:
            with trio.CancelScope(shield=True):
                await signal_group(process, signal.SIGKILL)
                await process.wait()


async def test_signal_group_after_exit_returns_false(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "quick", "#!/bin/sh\nexit 0\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        process = await spawn_mine(prepared)
        assert await process.wait() == 0
        assert await signal_group(process, signal.SIGTERM) is False
        assert await signal_group(process, signal.SIGKILL) is False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("problem", ["missing cwd", "exec format", "bad argument"])
async def test_spawn_errors_are_host_errors_and_leak_nothing(
    tmp_path: Path, programs_dir: Path, problem: str
) -> None:
    good = write_program(tmp_path / "good", "#!/bin/sh\n")
    garbage = write_program(tmp_path / "garbage", b"\x7fNOT AN ELF\0\0\0" * 10)
    cwd = str(tmp_path / "missing") if problem == "missing cwd" else None
    args = ["a\0b"] if problem == "bad argument" else []
    expected = {
        "missing cwd": "No such file or directory",
        "exec format": "Exec format error",
        "bad argument": "null byte",
    }[problem]
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(garbage if problem == "exec format" else good, programs_dir)
        before = open_fds()
        channel = HostChannel.open()
        with pytest.raises(HostError, match=expected):
            await spawn_program(
                prepared, args=args, env={}, cwd=cwd, uid=ME[0], gid=ME[1], channel=channel
            )
        for fd in channel.child_fds:  # closed by spawn_program itself
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(fd)
        await channel.aclose()
    assert open_fds() == before


# -- working directories and private copies -------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("relative", "must be an absolute path"),
        ("missing", "No such file or directory"),
        ("file", "is not a directory"),
        ("locked", "may not search the directory"),
        ("locked, via a link", "may not search the directory"),
        ("beneath locked", "may not search the directory"),
        ("not searchable itself", "may not search the directory"),
        ("open", None),
        ("open, via a link", None),
        ("root", None),
    ],
)
def test_check_directory_access(base_dir: Path, locked: Path, case: str, expected: str) -> None:
    readable_only = base_dir / "readable-only"
    readable_only.mkdir()
    readable_only.chmod(0o744)  # listable, not searchable
    (base_dir / "link").symlink_to(locked)
    (base_dir / "open-link").symlink_to(base_dir)
    path, uid = {
        "relative": ("work", NOBODY),
        "missing": (f"{base_dir}/missing", NOBODY),
        "file": (f"{locked}/prog", 0),
        "locked": (str(locked), NOBODY),
        "locked, via a link": (f"{base_dir}/link", NOBODY),
        "beneath locked": (f"{locked}/inner", NOBODY),
        "not searchable itself": (str(readable_only), NOBODY),
        "open": (str(base_dir), NOBODY),
        "open, via a link": (f"{base_dir}/open-link/", NOBODY),
        "root": (f"{locked}/inner", 0),
    }[case]
    if expected is None:
        check_directory_access(path, uid=uid, gid=uid, groups=())
    else:
        error = AuthorizationError if "search" in expected else HostError
        with pytest.raises(error, match=expected):
            check_directory_access(path, uid=uid, gid=uid, groups=())


@needs_root
@pytest.mark.parametrize("how", ["directly", "via a link"])
async def test_a_working_directory_the_caller_cannot_reach_is_refused(
    base_dir: Path, src_dir: Path, locked: Path, programs_dir: Path, how: str
) -> None:
    (locked / "secret").write_text("for root only\n")
    (base_dir / "link").symlink_to(locked)
    cwd = str(locked) if how == "directly" else f"{base_dir}/link"
    source = write_program(src_dir / "cat", "#!/bin/sh\necho ran\ncat secret\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        before = open_fds()
        channel = HostChannel.open()
        r, w = os.pipe()
        try:
            with pytest.raises(AuthorizationError, match=f"may not search the directory {locked}"):
                await spawn_program(
                    prepared,
                    args=[],
                    env={},
                    cwd=cwd,
                    uid=NOBODY,
                    gid=NOBODY,
                    channel=channel,
                    stdout=w,
                )
        finally:
            os.close(w)
        for fd in channel.child_fds:  # closed by spawn_program itself
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(fd)
        await channel.aclose()
        # Nothing was started: no child ever held the pipe's write end.
        assert await read_all(r) == b""
    assert open_fds() == before


@needs_root
async def test_a_working_directory_is_entered_as_checked(
    base_dir: Path, src_dir: Path, workdir: Path, programs_dir: Path
) -> None:
    (base_dir / "link").symlink_to(workdir)
    source = write_program(src_dir / "pwd", "#!/bin/sh\npwd\nid -u\n")
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        before = open_fds()
        outcomes = [
            await run(prepared, uid=NOBODY, gid=NOBODY, cwd=cwd)
            for cwd in (str(workdir), f"{base_dir}/link", None)
        ]
        assert open_fds() == before
    # The link resolved, and with no cwd not the host's (private) working directory.
    for outcome, expected in zip(outcomes, [workdir, workdir, Path("/")], strict=True):
        assert outcome.status == 0, outcome.err
        assert outcome.out.splitlines() == [str(expected), str(NOBODY)]


#: Run as another user: what of a copy (and its directories) it may reach.
PRYING = """
cat "$1" >/dev/null && echo "read the copy"
ls "$2" >/dev/null && echo "listed its directory"
ls "$3" >/dev/null && echo "listed the programs directory"
echo done
"""

#: The program itself, on its own copy.
SELF_CHECK = """#!/bin/sh
cat "$0" >/dev/null && echo "read itself"
echo more >>"$0" && echo "changed itself"
chmod 0777 "$0" && echo "changed its mode"
rm -f "$0" && echo "removed itself"
touch "$(dirname "$0")/new" && echo "wrote in its directory"
echo done
"""


@needs_root
async def test_a_copy_for_another_user_is_theirs_alone(src_dir: Path, programs_dir: Path) -> None:
    source = write_program(src_dir / "self-check", SELF_CHECK)
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        copy, directory = prepared.path.stat(), prepared.directory.stat()
        assert (stat.S_IMODE(copy.st_mode), copy.st_uid, copy.st_gid) == (0o550, 0, NOBODY)
        assert (stat.S_IMODE(directory.st_mode), directory.st_uid) == (0o710, 0)
        assert directory.st_gid == NOBODY
        assert acl_of(prepared.path) == only_for(NOBODY, 0o5, 0o5)
        assert acl_of(prepared.directory) == only_for(NOBODY, 0o7, 0o1)
        assert acl_of(prepared.directory, "system.posix_acl_default") is None
        assert (mode_of(programs_dir), os.stat(programs_dir).st_uid) == (0o711, 0)
        daemon = 1  # neither root nor NOBODY, in neither's group
        prying = await trio.run_process(
            [
                *("/bin/sh", "-c", PRYING, "prying"),
                *(str(prepared.path), str(prepared.directory), str(programs_dir)),
            ],
            cwd="/",
            user=daemon,
            group=daemon,
            extra_groups=[],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        result = await run(prepared, uid=NOBODY, gid=NOBODY)
    assert prying.stdout.decode().splitlines() == ["done"]
    assert prying.stderr.decode().count("Permission denied") == 3
    assert result.status == 0, result.err
    assert result.out.splitlines() == ["read itself", "done"]
    assert result.err.count("Permission denied") == 3, result.err
    assert "Operation not permitted" in result.err
    assert prepared.path.read_bytes() == SELF_CHECK.encode()
    assert mode_of(prepared.path) == 0o550
    assert listing(prepared.directory) == [prepared.path.name]


#: Run as another user, given the copy's and its directory's paths and O_PATH
#: descriptors: reopening /proc/self/fd/N checks the object's own permissions, so
#: the copy is tried past its directory too.
GROUP_PRYING = """
id -G
cat "$1" >/dev/null && echo "read the copy"
ls "$2" >/dev/null && echo "listed its directory"
cd "$2" 2>/dev/null && echo "entered its directory"
cat "/proc/self/fd/$3" >/dev/null && echo "read the copy by its descriptor"
ls "/proc/self/fd/$4/" >/dev/null && echo "listed its directory by its descriptor"
(cd "/proc/self/fd/$4" 2>/dev/null) && echo "entered its directory by its descriptor"
echo done
"""


async def pry(prepared: PreparedProgram, uid: int, gid: int, groups: list[int]) -> tuple[str, str]:
    """Run :data:`GROUP_PRYING` as (uid, gid, groups); its stdout and stderr."""
    fds = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in (prepared.path, prepared.directory)]
    try:
        result = await trio.run_process(
            [
                *("/bin/sh", "-c", GROUP_PRYING, "prying"),
                *(str(prepared.path), str(prepared.directory), *map(str, fds)),
            ],
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=groups,
            pass_fds=fds,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    finally:
        for fd in fds:
            os.close(fd)
    return result.stdout.decode(), result.stderr.decode()


@needs_root
async def test_a_copy_for_another_user_is_hidden_from_its_group(
    src_dir: Path, programs_dir: Path
) -> None:
    # Users who share the caller's primary group (a common 'users' group, say) must
    # not read the copy: the ACL grants the caller's uid, the group nothing.
    source = write_program(src_dir / "reads-itself", '#!/bin/sh\ncat "$0"\n')
    group = NOBODY
    other = 65533 if NOBODY == 65534 else 65534
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=group)
        assert (prepared.path.stat().st_gid, prepared.directory.stat().st_gid) == (group, group)
        as_primary = await pry(prepared, other, group, [])
        as_supplementary = await pry(prepared, 1, 1, [group])
        as_caller = await pry(prepared, NOBODY, group, [])
        result = await run(prepared, uid=NOBODY, gid=group)
    for (out, err), ids in ((as_primary, f"{group}"), (as_supplementary, f"1 {group}")):
        assert out.splitlines() == [ids, "done"], err
        assert err.count("Permission denied") == 4, err
    # The caller itself may read and run its copy and enter (not list) its directory.
    out, err = as_caller
    assert out.splitlines() == [
        f"{group}",
        "read the copy",
        "entered its directory",
        "read the copy by its descriptor",
        "entered its directory by its descriptor",
        "done",
    ], err
    assert (result.status, result.out, result.err) == (0, source.read_text(), "")


def test_acl_encoding() -> None:
    # version 2, then (tag, perm, id) little-endian, sorted by tag and then id.
    assert only_user_acl(65534, 0o5, 0o5) == bytes.fromhex(
        "02000000"
        "0100 0500 ffffffff"
        "0200 0500 feff0000"
        "0400 0000 ffffffff"
        "1000 0500 ffffffff"
        "2000 0000 ffffffff"
    )
    head = bytes.fromhex("02000000 0100 0700 ffffffff 0200 0100 01000000")
    assert only_user_acl(1, 0o7, 0o1).startswith(head)
    shuffled = [(OTHER, 0, NO_ID), (USER, 4, 7), (USER_OBJ, 7, NO_ID), (USER, 1, 3)]
    in_order = [(USER_OBJ, 7, NO_ID), (USER, 1, 3), (USER, 4, 7), (OTHER, 0, NO_ID)]
    assert encode_acl(shuffled) == b"\2\0\0\0" + b"".join(
        struct.pack("<HHI", *entry) for entry in in_order
    )
    with pytest.raises(ValueError, match="rwx bits"):
        encode_acl([(USER_OBJ, 0o10, NO_ID)])


@needs_root
async def test_an_inherited_acl_is_removed_before_the_copy_exists(
    src_dir: Path, base_dir: Path, programs_dir: Path
) -> None:
    # A default ACL above the programs directory would hand uid 1 every new
    # directory and, through it, the copy: it is dropped before the copy is made.
    inherited = [
        (USER_OBJ, 0o7, NO_ID),
        (USER, 0o7, 1),
        (GROUP_OBJ, 0o5, NO_ID),
        (MASK, 0o7, NO_ID),
        (OTHER, 0o5, NO_ID),
    ]
    data = b"\2\0\0\0" + b"".join(struct.pack("<HHI", *entry) for entry in inherited)
    os.setxattr(base_dir, "system.posix_acl_default", data)
    source = write_program(src_dir / "reads-itself", '#!/bin/sh\ncat "$0"\n')
    with trio.fail_after(TIMEOUT):
        own = await prepare(source, programs_dir)
        theirs = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        assert acl_of(programs_dir, "system.posix_acl_default") == inherited  # as set up
        pried = [await pry(prepared, 1, 1, []) for prepared in (own, theirs)]
        result = await run(theirs, uid=NOBODY, gid=NOBODY)
    for prepared in (own, theirs):
        assert acl_of(prepared.directory, "system.posix_acl_default") is None
    assert (acl_of(own.directory), acl_of(own.path)) == (None, None)
    assert (mode_of(own.directory), mode_of(own.path)) == (0o700, 0o500)
    assert acl_of(theirs.directory) == only_for(NOBODY, 0o7, 0o1)
    assert acl_of(theirs.path) == only_for(NOBODY, 0o5, 0o5)
    for out, err in pried:
        assert out.splitlines() == ["1", "done"], err
        assert err.count("Permission denied") == 4, err
    assert (result.status, result.out) == (0, source.read_text()), result.err


def mount(path: Path, fstype: str, options: str) -> Iterator[Path]:
    """Mount a new ``fstype`` at ``path`` (created) for one test; skip where we cannot."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", fstype, "-o", options, fstype, str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {fstype}: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def no_acl_dir(base_dir: Path) -> Iterator[Path]:
    """A ramfs (a real filesystem without ACLs or extended attributes) mounted here."""
    yield from mount(base_dir / "ramfs", "ramfs", "mode=0755")


@needs_root
async def test_without_acls_copies_fall_back_to_the_group(src_dir: Path, no_acl_dir: Path) -> None:
    programs_dir = no_acl_dir / "programs"
    source = write_program(src_dir / "reads-itself", '#!/bin/sh\ncat "$0"\n')
    if _ACL_WARNED.locked():  # warned by an earlier test: warn again here
        _ACL_WARNED.release()
    with trio.fail_after(TIMEOUT), capture_logs() as logs:
        own = await prepare(source, programs_dir)
        first = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        second = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        result = await run(second, uid=NOBODY, gid=NOBODY)
        pried = await pry(first, 65533 if NOBODY == 65534 else 65534, NOBODY, [])
    warnings = [entry for entry in logs if entry["event"] == "program_copy_acl_unsupported"]
    assert len(warnings) == 1, logs  # once
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["path"] == str(first.directory)
    with pytest.raises(OSError, match="Operation not supported") as unsupported:
        os.getxattr(first.path, "system.posix_acl_access")
    assert unsupported.value.errno == errno.ENOTSUP
    for prepared in (first, second):
        copy, directory = prepared.path.stat(), prepared.directory.stat()
        assert (stat.S_IMODE(copy.st_mode), copy.st_uid, copy.st_gid) == (0o550, 0, NOBODY)
        assert (stat.S_IMODE(directory.st_mode), directory.st_uid) == (0o710, 0)
        assert directory.st_gid == NOBODY
    assert (mode_of(own.directory), mode_of(own.path)) == (0o700, 0o500)
    assert (result.status, result.out) == (0, source.read_text()), result.err
    # The weaker fallback: the caller's primary group may read the copy.
    out, err = pried
    assert "read the copy" in out.splitlines(), err


# -- the bwrap sandbox ----------------------------------------------------------------


def test_wrap_builds_the_bwrap_command() -> None:
    assert Sandbox().wrap(["/p/prog", "x"], cwd="/w") == ["/p/prog", "x"]
    sandbox = Sandbox(kind="bwrap", bwrap="/opt/bwrap", share_network=False)
    assert sandbox.wrap(["/p/prog", "x"], cwd="/w") == [
        *("/bin/sh", "-c", '"$@"; exit "$?"', "taonet-sandbox", "/opt/bwrap"),
        *("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"),
        *("--ro-bind", "/p", "/p", "--bind", "/w", "/w", "--unshare-all"),
        *("--die-with-parent", "--new-session", "--chdir", "/w", "--", "/p/prog", "x"),
    ]
    shared = Sandbox(kind="bwrap", bwrap="/opt/bwrap").wrap(["/p/prog"], cwd=None)
    assert "--share-net" in shared
    assert "--chdir" not in shared
    assert "--bind" not in shared
    with pytest.raises(ValueError, match="kind"):
        Sandbox(kind="docker")
    with pytest.raises(HostError, match="not installed"):
        Sandbox(kind="bwrap", bwrap="no-such-bwrap-anywhere").wrap(["/p/prog"], cwd=None)


def sandbox_tmp(*bound: Path) -> list[str]:
    """What the sandbox's /tmp holds: the mount points of what was bound under it."""
    return sorted({p.relative_to("/tmp").parts[0] for p in bound if p.is_relative_to("/tmp")})


@needs_bwrap
async def test_bwrap_sandbox_channel_and_filesystem(
    tmp_path: Path, programs_dir: Path, workdir: Path
) -> None:
    source = write_program(tmp_path / "child.py", CHANNEL_CHILD)
    marker = tempfile.NamedTemporaryFile(prefix="taonet-marker-", dir="/tmp")  # noqa: SIM115
    channel = HostChannel.open()
    with marker, trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            result = await run(
                prepared,
                channel=channel,
                talk=conversation(channel),
                cwd=str(workdir),
                sandbox=BWRAP,
            )
        finally:
            await channel.aclose()
    assert result.status == 0, result.err
    assert result.talked == [b"hello from the child", b"got ping"]
    report = json.loads(result.out)
    assert report["ids"] == list(ME)
    assert report["root_write"] == errno.EROFS  # even for root
    assert report["tmp"] == sandbox_tmp(
        prepared.directory, workdir, *(Path(p) for p in RUNTIME_PATHS)
    )
    assert Path(marker.name).name not in report["tmp"]
    assert read_text(workdir / "written") == "from the child"


@needs_bwrap
@needs_root
async def test_bwrap_sandbox_as_another_user(
    src_dir: Path, programs_dir: Path, workdir: Path, open_dir: Path, host_groups: list[int]
) -> None:
    source = write_program(src_dir / "child.sh", SHELL_CHANNEL_CHILD)
    channel = HostChannel.open()

    async def echo(process: trio.Process) -> bytes:
        async with MessageStream(channel.host_stream()) as stream:
            await stream.send_message(b"hello")
            return await stream.receive_message()

    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir, uid=NOBODY, gid=NOBODY)
        try:
            result = await run(
                prepared,
                uid=NOBODY,
                gid=NOBODY,
                channel=channel,
                talk=echo,
                args=[str(open_dir)],
                cwd=str(workdir),
                sandbox=BWRAP,
            )
        finally:
            await channel.aclose()
    assert result.status == 0, result.err
    assert result.talked == b"hello"
    assert proc_status(result.out) == {
        "Uid": [str(NOBODY)] * 4,
        "Gid": [str(NOBODY)] * 4,
        "Groups": [],
    }
    lines = result.out.splitlines()
    bound = (prepared.directory, workdir, *(Path(p) for p in RUNTIME_PATHS))
    assert f"tmp: {' '.join(sandbox_tmp(*bound))} ".rstrip() in [line.rstrip() for line in lines]
    # Writable for this user on the host, not in the sandbox.
    assert f"touch: cannot touch '{open_dir}/probe': Read-only file system" in lines
    assert "cwd: written" in lines
    assert (workdir / "written").stat().st_uid == NOBODY


@needs_bwrap
@pytest.mark.slow
async def test_bwrap_sandbox_outlives_the_spawning_thread(
    tmp_path: Path, programs_dir: Path
) -> None:
    # Trio starts processes from worker threads, which exit after 10 idle seconds;
    # bwrap's --die-with-parent must not be tied to that thread.
    source = write_program(tmp_path / "wait", '#!/bin/sh\nread line\necho "got $line"\n')
    to_child_r, to_child_w = os.pipe()
    out_r, out_w = os.pipe()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            process = await spawn_mine(prepared, stdin=to_child_r, stdout=out_w, sandbox=BWRAP)
        finally:
            os.close(to_child_r)
            os.close(out_w)
        try:
            await trio.sleep(13)
            assert process.poll() is None
            os.write(to_child_w, b"still here\n")
            os.close(to_child_w)
            assert await read_all(out_r) == b"got still here\n"
            assert await process.wait() == 0
        finally:
            with trio.CancelScope(shield=True):
                await signal_group(process, signal.SIGKILL)
                await process.wait()


@needs_bwrap
async def test_signal_group_ends_a_sandboxed_program(tmp_path: Path, programs_dir: Path) -> None:
    source = write_program(tmp_path / "wait", "#!/bin/sh\necho started\nexec sleep 100\n")
    r, w = os.pipe()
    with trio.fail_after(TIMEOUT):
        prepared = await prepare(source, programs_dir)
        try:
            process = await spawn_mine(prepared, stdout=w, sandbox=BWRAP)
        finally:
            os.close(w)
        try:
            async with trio.lowlevel.FdStream(r) as stream:
                assert await stream.receive_some() == b"started\n"
                assert await signal_group(process, signal.SIGTERM) is True
                assert await process.wait() == -signal.SIGTERM
                # The sandbox died with its parent: the pipe's last writer is gone.
                assert await stream.receive_some() == b""
        finally:
            with trio.CancelScope(shield=True):
                await signal_group(process, signal.SIGKILL)
                await process.wait()


# -- POSIX ACLs and noexec mounts on the way to a program --------------------------

#: A script whose running (by the kernel, for the caller) reads it: cat is its interpreter.
SECRET = "#!/bin/cat\nSECRET: only some may read this\n"


async def run_directly(path: Path, uid: int, gid: int, groups: Sequence[int]) -> tuple[int, str]:
    """Execute ``path`` as (uid, gid, groups), as the kernel allows; status and stdout.

    (126, "") if the kernel refuses to execute it.
    """
    try:
        result = await trio.run_process(
            [str(path)],
            cwd="/",
            user=uid,
            group=gid,
            extra_groups=list(groups),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    except PermissionError:
        return 126, ""
    return result.returncode, result.stdout.decode()


def set_acl(path: Path, entries: Sequence[tuple[int, int, int]]) -> None:
    data = b"\2\0\0\0" + b"".join(struct.pack("<HHI", *entry) for entry in sorted(entries))
    os.setxattr(path, "system.posix_acl_access", data)


#: (what carries the ACL: the file or its directory, the ACL, the caller's supplementary
#: groups, whether the kernel lets it run the file). The caller is uid and gid NOBODY;
#: both are root:4343, mode 0755 until the ACL is set.
ACL_CASES = {
    # Mode 0755 shows r-x for everyone; the ACL denies the caller by name.
    "file-denies-the-user": ("file", acl(7, 5, 5, 5, users={NOBODY: 0}), (), False),
    # Mode shows 0750 (the mask): the owning group itself has nothing.
    "file-owning-group-has-nothing": ("file", acl(7, 0, 5, 0, users={1234: 5}), (4343,), False),
    # A named group's r-x, but the mask allows only r--; the other entry's r-x does
    # not apply to a member of a group the ACL names.
    "file-masked-group": ("file", acl(7, 0, 4, 5, groups={4646: 5}), (4646,), False),
    # Mode shows 0750, other nothing: the ACL grants the caller by name.
    "file-grants-the-user": ("file", acl(7, 0, 5, 0, users={NOBODY: 5}), (), True),
    "file-grants-a-named-group": ("file", acl(7, 0, 5, 0, groups={4646: 5}), (4646,), True),
    # A directory on the way: mode 0755 shows search for everyone, but not the caller.
    "directory-denies-the-user": ("directory", acl(7, 5, 5, 5, users={NOBODY: 0}), (), False),
}


@needs_root
@pytest.mark.parametrize("case", sorted(ACL_CASES))
async def test_posix_acls_are_checked_as_the_kernel_would(
    src_dir: Path, programs_dir: Path, case: str
) -> None:
    # The attack: a file (or directory) whose mode bits let the caller in but whose
    # ACL does not; the host must not read and run it for the caller (and must run
    # what an ACL grants the caller, though its mode bits alone would not).
    on, entries, groups, allowed = ACL_CASES[case]
    gid = NOBODY
    directory = src_dir / "acl"
    directory.mkdir(mode=0o755)
    source = write_program(directory / "secret", SECRET, 0o755)
    for path in (directory, source):
        os.chown(path, 0, 4343)
    set_acl(directory if on == "directory" else source, entries)
    with trio.fail_after(TIMEOUT):
        status, out = await run_directly(source, NOBODY, gid, groups)
        assert (status == 0) == allowed, out  # the kernel's verdict
        if not allowed:
            why = "may not search" if on == "directory" else "may not read and execute"
            with pytest.raises(AuthorizationError, match=rf"{why}.*POSIX ACL"):
                await prepare_program(source, programs_dir, uid=NOBODY, gid=gid, groups=groups)
            assert not exists(programs_dir)  # refused before anything was created
            if on == "directory":
                with pytest.raises(AuthorizationError, match=r"may not search.*POSIX ACL"):
                    check_directory_access(str(directory), uid=NOBODY, gid=gid, groups=groups)
            # Others the ACL does not name are unaffected, and root is exempt.
            await prepare_program(source, programs_dir, uid=0, gid=0)
            return
        prepared = await prepare_program(source, programs_dir, uid=NOBODY, gid=gid, groups=groups)
        result = await run(prepared, uid=NOBODY, gid=gid)
    assert (result.status, result.out) == (0, out), result.err


@pytest.fixture
def noexec_dir(base_dir: Path) -> Iterator[Path]:
    """A tmpfs mounted noexec here, where every user may search."""
    yield from mount(base_dir / "noexec", "tmpfs", "noexec,mode=0755,size=1m")


@needs_root
async def test_a_program_on_a_noexec_mount_is_refused(noexec_dir: Path, programs_dir: Path) -> None:
    # The attack: the caller may not execute a file on a noexec mount; the host
    # must not copy it to where it may, and run it.
    source = write_program(noexec_dir / "prog", SECRET, 0o755)
    with trio.fail_after(TIMEOUT):
        status, out = await run_directly(source, NOBODY, NOBODY, ())
        assert (status, out) == (126, "")  # the kernel refuses
        for uid in (NOBODY, 0):  # for anyone: the kernel executes it for no one
            with pytest.raises(AuthorizationError, match="mounted noexec"):
                await prepare_program(source, programs_dir, uid=uid, gid=uid)
    assert not exists(programs_dir)
