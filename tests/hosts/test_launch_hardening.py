"""The review of program launch (A1, F2-F7), each attack repeated for real.

Real host, real admin socket, real users (uid NOBODY, with 300 groups), real
processes. Each test failed on the code before the fix:

* F2: a caller in more than 256 groups was checked, and its program run, with none,
  so a group that denies (mode 0604 ``root:banned``) denied nothing;
* F3: ``/proc/PID/cwd`` of another user's process was followed as root, and the
  refusal said where that process works;
* F4: empty directories cost a user's share nothing;
* F5: a relative ``#!`` interpreter or RUNPATH let ``--cwd`` pick the code that runs;
* F6: a symbolic link to a directory in a copy kept ``remove_tree`` from removing it,
  and copies left by a crashed host stayed for ever;
* F7: ``list`` showed every user's programs and paths to anyone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import AuthorizationError, HostError
from taonet.hosts.linux import AdminClient
from taonet.hosts.linux._interpreters import check_interpreter
from taonet.hosts.linux._process import prepare_program
from taonet.hosts.linux._tree import TreeLimits, remove_tree
from tests.hosts.linux_helpers import init_root, open_root

TIMEOUT = 60
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="acting as other users needs root")
NOBODY = 65534 if os.getuid() != 65534 else 65533
#: 300 supplementary groups (more than the 256 the host used to read); the last denies.
GROUPS = list(range(70000, 70300))
BANNED = GROUPS[-1]
SECRET = "TOP SECRET for everyone but the banned group"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every uid can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="taonet-test-launch-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


#: Another user's client: imports taonet as root, then becomes uid NOBODY with the
#: groups given, and runs each operation in argv[2] (JSON) on the admin socket.
CLIENT = r"""
import json, os, sys
import trio
from taonet.hosts.linux import AdminClient
from taonet.hosts.linux._interpreters import check_interpreter

sock, ops, uid, groups, output = sys.argv[1:6]
ops, uid = json.loads(ops), int(uid)
out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
os.setgroups([int(g) for g in groups.split(",") if g])
os.setgid(uid)
os.setuid(uid)

async def main():
    results = []
    async with AdminClient.connect(sock) as admin:
        for op in ops:
            try:
                if op[0] == "start":
                    info = await admin.start(op[1], op[2], stdout=out, stderr=out,
                                             env={"PATH": "/usr/bin:/bin"})
                    results.append({"pid": info.pid})
                elif op[0] == "run":
                    info = await admin.start(op[1], op[2], stdout=out, stderr=out,
                                             env={"PATH": "/usr/bin:/bin"})
                    results.append({"status": (await admin.wait(str(info.pid))).exit_status})
                else:
                    listed = await admin.list()
                    results.append({"listed": [[p.uid, p.path, str(p.name)] for p in listed]})
            except Exception as exc:
                results.append({"error": type(exc).__name__, "message": str(exc)})
    print(json.dumps(results))

trio.run(main)
"""


async def as_user(
    sock: Path,
    ops: list[list[Any]],
    output: Path,
    groups: list[int] = (),  # type: ignore[assignment]
) -> list[dict[str, Any]]:
    result = await trio.run_process(
        [
            *(sys.executable, "-c", CLIENT, str(sock), json.dumps(ops), str(NOBODY)),
            *(",".join(map(str, groups)), str(output)),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    answer: list[dict[str, Any]] = json.loads(result.stdout)
    return answer


@needs_root
async def test_a_caller_in_300_groups_keeps_them_all(shared: Path, nursery: trio.Nursery) -> None:
    # F2: 0604 root:banned, and the caller is in banned (its 300th group).
    secret = shared / "secret.txt"
    secret.write_text(SECRET)
    os.chown(secret, 0, BANNED)
    secret.chmod(0o604)
    # A program only the banned group may not run (0705 root:banned) ...
    denied = shared / "denied.sh"
    denied.write_text("#!/bin/sh\necho ran the denied program\n")
    os.chown(denied, 0, BANNED)
    denied.chmod(0o705)
    # ... and one anyone may run, that reads the secret when it runs.
    reader = shared / "reader.sh"
    reader.write_text(f"#!/bin/sh\nid -G | wc -w\nexec cat {secret}\n")
    reader.chmod(0o755)
    output = shared / "output.txt"
    init_root(shared / "host")
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, shared / "host")
        results = await as_user(
            host.socket_path,
            [["run", str(denied), []], ["run", str(reader), []]],
            output,
            GROUPS,
        )
        await host.stop(grace_period=0)
    assert results[0]["error"] == "AuthorizationError", results
    assert "may not read and execute" in results[0]["message"]
    assert results[1] == {"status": 1}, results  # cat was refused
    text = output.read_text()
    assert SECRET not in text
    assert "Permission denied" in text
    assert text.splitlines()[0].strip() == str(len(GROUPS) + 1)  # its gid and every group


@needs_root
async def test_proc_links_of_another_users_process_are_not_followed(shared: Path) -> None:
    # F3: the host used to resolve /proc/PID/cwd as root and say what it found there.
    private = shared / "project-cheetah-layoffs"
    private.mkdir(mode=0o700)
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(["sleep", "300"], cwd=str(private))
        try:
            for link in ("cwd/x", "exe", "root/etc/passwd", "fd/0"):
                with pytest.raises(AuthorizationError) as refused:
                    await prepare_program(
                        f"/proc/{process.pid}/{link}", shared / "programs", uid=NOBODY, gid=NOBODY
                    )
                message = str(refused.value)
                if link != "fd/0":  # (its fd directory is not searchable: refused first)
                    assert "does not follow symbolic links in /proc" in message
                assert "cheetah" not in message
                assert "sleep" not in message
        finally:
            process.kill()
            await process.wait()


async def test_empty_directories_are_charged(tmp_path: Path) -> None:
    # F4: 200 empty directories took 800 KB of disk (and 200 inodes), charged 0 bytes.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "run").write_text("#!/bin/sh\n")
    (tree / "run").chmod(0o755)
    for index in range(200):
        (tree / f"d{index}").mkdir()
    share = 100 * 4096
    with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="would take over 409600 bytes"):
        await prepare_program(
            tree,
            tmp_path / "programs",
            uid=os.geteuid(),
            gid=os.getegid(),
            max_size=share,
            entry="run",
        )
    assert os.listdir(tmp_path / "programs") == []
    # Within the share it is copied, and charged per entry.
    with trio.fail_after(TIMEOUT):
        prepared = await prepare_program(
            tree,
            tmp_path / "programs",
            uid=os.geteuid(),
            gid=os.getegid(),
            max_size=1 << 30,
            tree_limits=TreeLimits(),
            entry="run",
        )
    assert prepared.charged >= 202 * 4096
    prepared.cleanup()


async def test_a_relative_shebang_is_refused(tmp_path: Path) -> None:
    # F5: '#!bin/sh' runs whatever bin/sh is in the working directory the caller picks.
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copyfile("/bin/sh", tree / "bin" / "sh")
    (tree / "bin" / "sh").chmod(0o755)
    for line in ("#!bin/sh", "#!./bin/sh", "#! bin/sh -e"):
        (tree / "run").write_text(f"{line}\necho measured\n")
        (tree / "run").chmod(0o755)
        with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="relative to the working"):
            await prepare_program(
                tree, tmp_path / "programs", uid=os.geteuid(), gid=os.getegid(), entry="run"
            )
    single = tmp_path / "single"
    single.write_text("#!bin/sh\necho measured\n")
    single.chmod(0o755)
    with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="relative to the working"):
        await prepare_program(single, tmp_path / "programs", uid=os.geteuid(), gid=os.getegid())
    assert os.listdir(tmp_path / "programs") == []


needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@needs_cc
@pytest.mark.parametrize(
    ("rpath", "refused"),
    [("lib", True), (":lib2", True), ("needed", True), ("$ORIGIN/lib", False)],
)
async def test_a_relative_runpath_is_refused(tmp_path: Path, rpath: str, refused: bool) -> None:
    # F5: RUNPATH 'lib' loads lib/libwho.so from the caller's working directory.
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    (tmp_path / "who.c").write_text('const char *who(void){return "measured";}\n')
    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\nconst char *who(void);\nint main(void){puts(who());return 0;}\n"
    )
    await trio.run_process(
        ["cc", "-shared", "-fPIC", "-o", str(tree / "lib" / "libwho.so"), str(tmp_path / "who.c")]
    )
    await trio.run_process(
        [
            *("cc", "-o", str(tree / "run"), str(tmp_path / "main.c")),
            *(
                # NEEDED 'lib/libwho.so' (a library without a soname, linked by path)
                ["-Wl,--no-as-needed", "lib/libwho.so"]
                if rpath == "needed"
                else [f"-L{tree / 'lib'}", "-lwho", f"-Wl,-rpath,{rpath}", "-Wl,--enable-new-dtags"]
            ),
        ],
        cwd=tree,
    )
    with trio.fail_after(TIMEOUT):
        if refused:
            with pytest.raises(HostError, match="relative to the working directory"):
                await prepare_program(
                    tree, tmp_path / "programs", uid=os.geteuid(), gid=os.getegid(), entry="run"
                )
        else:
            prepared = await prepare_program(
                tree, tmp_path / "programs", uid=os.geteuid(), gid=os.getegid(), entry="run"
            )
            result = await trio.run_process([str(prepared.path)], cwd="/", capture_stdout=True)
            assert result.stdout == b"measured\n"
            prepared.cleanup()


def test_remove_tree_removes_a_copy_holding_a_link_to_a_directory(tmp_path: Path) -> None:
    # F6: a program that owns its copy plants a link to a directory in it.
    copy = tmp_path / "copy"
    (copy / "tree" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the copy's")
    (copy / "tree" / "link").symlink_to(outside)
    (copy / "tree" / "sub").chmod(0o500)
    (copy / "tree").chmod(0o500)
    outside.chmod(0o555)
    remove_tree(copy)
    assert not copy.exists()
    assert (outside / "keep").read_text() == "not the copy's"
    assert outside.stat().st_mode & 0o777 == 0o555  # the link was not followed


async def test_a_restarted_host_removes_the_copies_of_a_crash(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # F6: copies a killed host left behind; one of them its orphan still runs in.
    init_root(tmp_path / "host")
    programs = tmp_path / "host" / "programs"
    programs.mkdir(mode=0o711)
    stale, busy = (programs / secrets.token_hex(16) for _ in range(2))
    for directory in (stale, busy):
        (directory / "tree").mkdir(parents=True)
        (directory / "tree" / "main.py").write_text("")
        (directory / "tree").chmod(0o500)
    other = programs / "not-a-copy"
    other.mkdir()
    with trio.fail_after(TIMEOUT):
        orphan = await trio.lowlevel.open_process(["sleep", "300"], cwd=str(busy / "tree"))
        try:
            host = await open_root(nursery, tmp_path / "host")
            assert not stale.exists()
            assert (busy / "tree" / "main.py").exists()  # still in use
            assert other.exists()  # not the host's to remove
            await host.stop(grace_period=0)
        finally:
            orphan.kill()
            await orphan.wait()


async def test_a_host_removes_copies_of_interpreters_it_no_longer_offers(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # F6's kin: each update of an interpreter leaves its old execute-only copy.
    init_root(tmp_path / "host", interpreters={"python3": sys.executable})
    copies = tmp_path / "host" / "interpreters"
    current = check_interpreter("python3", sys.executable, owner=os.geteuid()).digest.hex()
    for digest in (current, "0" * 64):
        (copies / digest).mkdir(parents=True)
        (copies / digest / "interpreter").write_bytes(b"")
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        assert sorted(os.listdir(copies)) == [current]
        await host.stop(grace_period=0)


@needs_root
async def test_other_users_do_not_see_each_others_programs(
    shared: Path, nursery: trio.Nursery
) -> None:
    # F7: a second user listed root's programs with their source paths.
    hidden = shared / "project-cheetah"
    hidden.mkdir(mode=0o700)
    mine = hidden / "svc"
    mine.write_text("#!/bin/sh\nexec sleep 300\n")
    mine.chmod(0o700)
    theirs = shared / "theirs.sh"
    theirs.write_text("#!/bin/sh\nexec sleep 300\n")
    theirs.chmod(0o755)
    init_root(shared / "host")
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, shared / "host")
        async with AdminClient.connect(host.socket_path) as admin:
            root_program = await admin.start(str(mine), [])
        results = await as_user(
            host.socket_path,
            [["list"], ["start", str(theirs), []], ["list"]],
            shared / "output.txt",
        )
        async with AdminClient.connect(host.socket_path) as admin:
            seen_by_root = await admin.list()
        await host.stop(grace_period=0)
    assert results[0] == {"listed": []}, results
    assert results[2]["listed"] == [[NOBODY, str(theirs), results[2]["listed"][0][2]]], results
    assert "cheetah" not in json.dumps(results)
    # Root sees both.
    assert {p.pid for p in seen_by_root} == {root_program.pid, results[1]["pid"]}
