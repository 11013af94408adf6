"""A real Linux host running program directories and scripts with its own interpreters.

Real host, real admin socket, real hosted programs: the attacks are a ``python3``
planted first in the PATH, interpreters others can write, and a program directory
changed while its program runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import AuthorizationError, ConfigError, HostError, auth
from taonet.hosts.linux import AdminClient, LinuxHost, LinuxHostConfig, ProgramInfo
from taonet.hosts.linux._interpreters import check_interpreter
from tests.conftest import MakeDomain
from tests.hosts.linux_helpers import RUNTIME_PATHS, init_root, open_root, read_all

TIMEOUT = 60
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="changing owners needs root")
NOBODY = 65534 if os.getuid() != 65534 else 65533
PYTHON = sys.executable
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def sha256_of(path: str | Path) -> bytes:
    return hashlib.sha256(Path(os.path.realpath(path)).read_bytes()).digest()


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


async def start(
    host: LinuxHost,
    program: Path,
    *,
    entry: str | None = None,
    args: Sequence[str] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    stdin: int | None = None,
) -> tuple[ProgramInfo, int]:
    """Start ``program``; its info and the read end of its stdout (the caller closes it)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        async with AdminClient.connect(host.socket_path) as admin:
            info = await admin.start(
                str(program),
                list(args),
                cwd=cwd,
                env=env or {"PATH": SYSTEM_PATH},
                stdout=write_fd,
                stderr=write_fd,
                stdin=stdin,
                entry=entry,
            )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return info, read_fd


async def run(host: LinuxHost, program: Path, **options: Any) -> tuple[ProgramInfo, str]:
    """Start ``program``, wait for it; its final info and its output."""
    info, read_fd = await start(host, program, **options)
    output = await read_all(read_fd)
    async with AdminClient.connect(host.socket_path) as admin:
        done = await admin.wait(str(info.pid))
    assert done.exit_status == 0, output
    return info, output.decode()


def last_json(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines, output
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def script_name(host: LinuxHost, program: Path, interpreter: str) -> auth.Prin:
    ext = auth.PrinExt(
        "Script",
        (
            auth.Bytes(hashlib.sha256(program.read_bytes()).digest()),
            auth.Str(interpreter),
            auth.Bytes(sha256_of(interpreter)),
        ),
    )
    return host.name.extend(auth.SubPrin((ext,)))


REPORT = """
import json, os, sys
print(json.dumps({"exe": sys.executable, "isolated": sys.flags.isolated,
                  "bytecode": sys.dont_write_bytecode, "path0": sys.path[0],
                  "cwd": os.getcwd()}))
"""
FAKE_PYTHON = """#!/bin/sh
echo HIJACKED
touch "{marker}"
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A directory holding a planted ``python3`` that leaves a marker when it runs."""
    directory = tmp_path / "fake-bin"
    write(directory / "python3", FAKE_PYTHON.format(marker=tmp_path / "hijacked"), 0o755)
    return directory


async def test_env_scripts_run_the_hosts_python_not_one_found_in_a_path(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attack: a python3 first in the PATH of whoever starts the host and of the
    # caller. With [interpreters] the host runs its own, isolated, and names it.
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ.get('PATH', SYSTEM_PATH)}")
    caller_env = {"PATH": f"{fake_bin}:{SYSTEM_PATH}"}
    script = write(tmp_path / "who", "#!/usr/bin/env python3" + REPORT, 0o755)
    tree = tmp_path / "service"
    write(tree / "__main__.py", REPORT)  # a .py entry: the host's python3
    write(tree / "env_entry.py", "#!/usr/bin/env python3" + REPORT)
    init_root(tmp_path / "host", interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            info, output = await run(host, script, env=caller_env)
            assert "HIJACKED" not in output
            report = last_json(output)
            assert (report["exe"], report["isolated"], report["bytecode"]) == (PYTHON, 1, True)
            assert info.name == script_name(host, script, PYTHON)
            for entry in (None, "env_entry.py"):
                info, output = await run(host, tree, entry=entry, env=caller_env)
                assert "HIJACKED" not in output
                report = last_json(output)
                assert (report["exe"], report["isolated"]) == (PYTHON, 1)
                ext = info.name.ext.exts[-1]
                assert ext.name == "ProgramTree"
                assert ext.args[1:] == (
                    auth.Str(entry or "__main__.py"),
                    auth.Str(PYTHON),
                    auth.Bytes(sha256_of(PYTHON)),
                )
                # It runs in its copy, its entry's directory first on sys.path.
                assert report["cwd"] == report["path0"]
                assert report["cwd"].startswith(str(host.directory / "programs"))
            await host.stop()
    assert not (tmp_path / "hijacked").exists()


async def test_without_interpreters_an_env_script_finds_the_planted_python(
    tmp_path: Path, fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the test above guards against, shown on a host.toml without
    # [interpreters] (as earlier versions wrote it): the planted python3 runs.
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ.get('PATH', SYSTEM_PATH)}")
    script = write(tmp_path / "who", "#!/usr/bin/env python3" + REPORT, 0o755)
    tree = tmp_path / "service"
    write(tree / "__main__.py", REPORT)
    init_root(tmp_path / "host")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            _, output = await run(host, script)
            assert "HIJACKED" in output
            # A program directory's Python entry needs an interpreter the host offers.
            with pytest.raises(HostError, match="which this host does not offer"):
                await start(host, tree)
            await host.stop()
    assert (tmp_path / "hijacked").exists()


async def test_interpreters_the_host_does_not_offer_are_refused(tmp_path: Path) -> None:
    ruby = write(tmp_path / "ruby-script", "#!/usr/bin/env ruby\nputs 1\n", 0o755)
    options = write(tmp_path / "options", "#!/usr/bin/env -S python3 -u\nprint(1)\n", 0o755)
    words = write(tmp_path / "words", "#!/usr/bin/env python3 -u\nprint(1)\n", 0o755)
    shell = write(tmp_path / "shell", "#!/bin/sh\necho kernel\n", 0o755)
    init_root(tmp_path / "host", interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            with pytest.raises(HostError, match=r"asks for 'ruby' .* does not offer"):
                await start(host, ruby)
            for program in (options, words):
                with pytest.raises(HostError, match="its own interpreter NAME only"):
                    await start(host, program)
            # An absolute #! interpreter: the kernel runs it, named as before.
            info, output = await run(host, shell)
            assert output == "kernel\n"
            assert info.name.ext.exts[-1] == auth.PrinExt(
                "Program", (auth.Bytes(hashlib.sha256(shell.read_bytes()).digest()),)
            )
            assert not os.listdir(host.directory / "programs")  # refusals left nothing
            await host.stop()


# -- checking interpreters ----------------------------------------------------------------


def interpreter_at(directory: Path, *, mode: int = 0o755, dir_mode: int = 0o755) -> Path:
    """A stand-in interpreter binary (a copy of /bin/true) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(dir_mode)
    path = directory / "python3"
    shutil.copyfile("/bin/true", path)
    path.chmod(mode)
    return path


def test_an_interpreter_others_can_replace_is_refused(tmp_path: Path) -> None:
    owner = os.geteuid()
    good = interpreter_at(tmp_path / "good")
    assert check_interpreter("python3", str(good), owner=owner).digest == sha256_of(good)
    cases = {
        "writable directory": interpreter_at(tmp_path / "open", dir_mode=0o777),
        "group-writable file": interpreter_at(tmp_path / "gw", mode=0o775),
        "world-writable file": interpreter_at(tmp_path / "ww", mode=0o757),
    }
    for path in cases.values():
        with pytest.raises(ConfigError, match="writable by others"):
            check_interpreter("python3", str(path), owner=owner)
    # A link to a good interpreter, in a directory others can write: they could
    # point it elsewhere.
    open_dir = tmp_path / "open-links"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "python3").symlink_to(good)
    with pytest.raises(ConfigError, match="writable by others"):
        check_interpreter("python3", str(open_dir / "python3"), owner=owner)
    # A link in a safe directory to a good interpreter is fine (a virtual
    # environment's bin/python): the path is kept, the target is hashed.
    safe_dir = tmp_path / "venv-bin"
    safe_dir.mkdir()
    (safe_dir / "python").symlink_to(good)
    checked = check_interpreter("python3", str(safe_dir / "python"), owner=owner)
    assert (checked.path, checked.digest) == (str(safe_dir / "python"), sha256_of(good))
    not_executable = interpreter_at(tmp_path / "noexec", mode=0o644)
    with pytest.raises(ConfigError, match="not an executable regular file"):
        check_interpreter("python3", str(not_executable), owner=owner)
    with pytest.raises(ConfigError, match="not an absolute path"):
        check_interpreter("python3", "python3", owner=owner)
    with pytest.raises(ConfigError, match="cannot open"):
        check_interpreter("python3", str(tmp_path / "missing"), owner=owner)
    with pytest.raises(ConfigError, match="not an interpreter name"):
        check_interpreter("../python3", str(good), owner=owner)


@needs_root
def test_an_interpreter_another_user_owns_is_refused(tmp_path: Path) -> None:
    theirs = interpreter_at(tmp_path / "theirs")
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"belongs to uid {NOBODY}"):
        check_interpreter("python3", str(theirs), owner=0)
    their_dir = interpreter_at(tmp_path / "their-dir").parent
    os.chown(their_dir, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=f"belongs to uid {NOBODY}"):
        check_interpreter("python3", str(their_dir / "python3"), owner=0)
    # In a sticky directory others may write (/tmp), what they own is refused too.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = interpreter_at(sticky / "planted")
    os.chown(planted.parent, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="which others may write"):
        check_interpreter("python3", str(planted), owner=0)


async def test_a_host_with_a_writable_interpreter_does_not_start(tmp_path: Path) -> None:
    writable = interpreter_at(tmp_path / "bin", mode=0o777)
    init_root(tmp_path / "host", interpreters={"python3": str(writable)})
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="writable by others"):
        await LinuxHost.open(tmp_path / "host", password=b"correct horse battery staple")


async def test_an_interpreter_changed_while_the_host_runs_is_measured_again(
    tmp_path: Path,
) -> None:
    wrapper = write(tmp_path / "bin" / "python3", f'#!/bin/sh\nexec {PYTHON} "$@"\n', 0o755)
    tree = tmp_path / "service"
    write(tree / "__main__.py", REPORT)
    init_root(tmp_path / "host", interpreters={"python3": str(wrapper)})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            first, _ = await run(host, tree)
            with wrapper.open("a") as more:
                more.write("# upgraded\n")
            second, _ = await run(host, tree)
            await host.stop()
    digests = [info.name.ext.exts[-1].args[-1] for info in (first, second)]
    assert digests[0] != digests[1]
    assert digests[1] == auth.Bytes(sha256_of(wrapper))


# -- a program directory changed while it runs ----------------------------------------------


WATCHER = """
import json, os, sys
import trio
import helper
from taonet.hosts import parent


def snapshot():
    files = {}
    for where, _, names in os.walk("."):
        for name in names:
            path = os.path.join(where, name)
            with open(path) as f:
                files[path] = f.read()
    return files


async def main():
    async with parent() as tao:
        name = str(await tao.get_tao_name())
    print(json.dumps({"name": name, "helper": helper.VALUE, "files": snapshot()}), flush=True)
    sys.stdin.readline()
    print(json.dumps({"files": snapshot()}), flush=True)


trio.run(main)
"""


async def read_line(stream: trio.lowlevel.FdStream, pending: bytearray) -> dict[str, Any]:
    while b"\n" not in pending:
        chunk = await stream.receive_some(65536)
        assert chunk, pending.decode()
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    result: dict[str, Any] = json.loads(line)
    return result


async def test_a_program_directory_changed_while_it_runs_keeps_its_name(tmp_path: Path) -> None:
    # The attack: change the source directory while its program runs (edit a
    # module, add one, remove a file), hoping the running program (or its name)
    # follows. Neither does; a restart measures the new tree and gets a new name.
    tree = tmp_path / "service"
    write(tree / "__main__.py", WATCHER)
    write(tree / "helper.py", "VALUE = 'old'\n")
    write(tree / "data.txt", "data\n")
    init_root(tmp_path / "host", interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            try:
                info, out_fd = await start(host, tree, stdin=stdin_r)
            finally:
                os.close(stdin_r)
            pending = bytearray()
            async with trio.lowlevel.FdStream(out_fd) as out:
                before = await read_line(out, pending)
                assert before["name"] == str(info.name)
                assert before["helper"] == "old"
                write(tree / "helper.py", "VALUE = 'new'\n")
                write(tree / "added.py", "print('added')\n")
                (tree / "data.txt").unlink()
                async with AdminClient.connect(host.socket_path) as admin:
                    [running] = [p for p in await admin.list() if p.pid == info.pid]
                    assert running.name == info.name
                    os.write(stdin_w, b"go\n")
                    os.close(stdin_w)
                    after = await read_line(out, pending)
                    assert after["files"] == before["files"]
                    assert (await admin.wait(str(info.pid))).exit_status == 0
            # Started again: the tree as it is now, under a new name.
            stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
            try:
                again, out_fd = await start(host, tree, stdin=stdin_r)
            finally:
                os.close(stdin_r)
            async with trio.lowlevel.FdStream(out_fd) as out:
                restarted = await read_line(out, bytearray())
            os.close(stdin_w)
            assert again.name != info.name
            assert restarted["helper"] == "new"
            assert sorted(restarted["files"]) == ["./__main__.py", "./added.py", "./helper.py"]
            await host.stop()


async def test_the_working_directory_of_a_program_directory(tmp_path: Path) -> None:
    tree = tmp_path / "service"
    write(tree / "__main__.py", REPORT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    init_root(tmp_path / "host", interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            _, output = await run(host, tree)
            root = Path(last_json(output)["cwd"])
            # The root of its private copy, which it may read but not change.
            assert root.parent.parent == host.directory / "programs"
            assert root.name == "service"
            _, output = await run(host, tree, cwd=str(elsewhere))
            assert last_json(output)["cwd"] == str(elsewhere)
            await host.stop()


def test_host_toml_holds_interpreters_and_tree_limits() -> None:
    from taonet.hosts.linux._tree import TreeLimits

    config = LinuxHostConfig(
        kind="root",
        guard="Liberal",
        interpreters={"python3": "/usr/bin/python3", "py": "/opt/py/bin/python"},
        program_tree=TreeLimits(max_files=50, max_bytes=1 << 20),
    )
    text = config.to_toml().decode()
    assert '[interpreters]\npy = "/opt/py/bin/python"\npython3 = "/usr/bin/python3"' in text
    assert "[program_tree]\nmax_files = 50\nmax_bytes = 1048576" in text
    assert LinuxHostConfig.from_toml(config.to_toml()) == config
    plain = LinuxHostConfig(kind="root", guard="Liberal")
    assert "[interpreters]" not in plain.to_toml().decode()  # no table: none offered
    assert LinuxHostConfig.from_toml(plain.to_toml()).interpreters is None
    head = b'[host]\nkind = "root"\nguard = "Liberal"\n'
    for bad, message in (
        (head + b'[interpreters]\npython3 = "python3"\n', "must be an absolute path"),
        (head + b'[interpreters]\n"a b" = "/x"\n', "not an interpreter name"),
        (head + b"[interpreters]\npython3 = 3\n", "must be a path"),
        (head + b"[program_tree]\nmax_files = 0\n", "must be a positive integer"),
        (head + b"[program_tree]\nmax_files = true\n", "must be an integer"),
        (head + b"[program_tree]\nmax_files = 1\nmax_inodes = 2\n", "unknown key"),
        (head + b"[other]\nx = 1\n", "may hold"),
    ):
        with pytest.raises(ConfigError, match=message):
            LinuxHostConfig.from_toml(bad)


needs_bwrap = pytest.mark.skipif(
    not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"),
    reason="bubblewrap is not installed (in CI this test runs, and fails)",
)


@needs_bwrap
async def test_a_program_directory_runs_in_the_sandbox(tmp_path: Path) -> None:
    # Under bwrap /tmp is empty: the host binds the program's whole private
    # directory (not only the entry's) so its modules are there.
    tree = tmp_path / "service"
    write(tree / "__main__.py", "import helper\nprint(helper.VALUE)\n" + REPORT)
    write(tree / "helper.py", "VALUE = 'from a module beside the entry'\n")
    init_root(
        tmp_path / "host",
        interpreters={"python3": PYTHON},
        sandbox="bwrap",
        sandbox_paths=RUNTIME_PATHS,
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            _, output = await run(host, tree)
            await host.stop()
    assert output.splitlines()[0] == "from a module beside the entry"
    assert Path(last_json(output)["cwd"]).name == "service"


async def test_the_domain_guard_allows_a_program_directory_by_its_name(
    tmp_path: Path, make_domain: MakeDomain
) -> None:
    # The rule names the tree's manifest, its entry and the interpreter, computed
    # here from the format (not by the host); any change to the tree is refused.
    from tests.hosts.test_program_trees import spec_manifest

    tree = tmp_path / "service"
    write(tree / "__main__.py", "import helper\n" + REPORT)
    write(tree / "helper.py", "VALUE = 1\n")
    tail = auth.PrinTail(
        auth.SubPrin(
            (
                auth.PrinExt(
                    "ProgramTree",
                    (
                        auth.Bytes(hashlib.sha256(spec_manifest(tree)).digest()),
                        auth.Str("__main__.py"),
                        auth.Str(PYTHON),
                        auth.Bytes(sha256_of(PYTHON)),
                    ),
                ),
            )
        )
    )
    domain = make_domain(rules=(f'Authorized({tail}, "Execute")',))
    init_root(tmp_path / "host", domain=domain, interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            info, _ = await run(host, tree)
            assert info.name == host.name.extend(tail.ext)
            write(tree / "helper.py", "VALUE = 2\n")
            with pytest.raises(AuthorizationError, match=r"\.ProgramTree\(\["):
                await start(host, tree)
            await host.stop()
