"""Program directories: walked as the caller, bounded, copied, measured as a manifest.

Real files, real copies and real child processes; the attacks are made as a caller
would make them (links out of the tree, entries swapped during the walk, trees too
big, files the caller may not read, trees built to collide). Tests that switch users
need a root host (they skip otherwise).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthorizationError, HostError, auth
from taonet.domain import program_subprin
from taonet.hosts.linux._process import (
    PreparedProgram,
    prepare_program,
    spawn_program,
)
from taonet.hosts.linux._process import _encode_acl as encode_acl
from taonet.hosts.linux._tree import (
    DIRECTORY,
    FILE,
    MANIFEST_MAGIC,
    TreeEntry,
    TreeLimits,
    encode_manifest,
)

TIMEOUT = 60
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs a root host")
NOBODY = 65534 if os.getuid() != 65534 else 65533
SECRET = b"the secret outside the tree\n"
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
NO_ID = 0xFFFFFFFF


DEFAULT_LIMITS = TreeLimits()


# -- helpers ------------------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, bytes | str | None], mode: int = 0o644) -> Path:
    """``root`` holding ``files`` (relative path: content; None: an empty directory)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)
    return root


def spec_manifest(root: Path) -> bytes:
    """The manifest of the tree at ``root``, written here from the format's description
    (not with taonet's encoder): magic, u32 count, then per entry in path-byte order
    u8 kind, u32 path length, path, and for a file u8 executable, u64 size, SHA-256."""
    found: list[tuple[bytes, bytes]] = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        base = os.path.relpath(parent, root)
        for name in dirs:
            rel = os.fsencode(os.path.normpath(os.path.join(base, name)))
            found.append((rel, struct.pack(">BI", 2, len(rel)) + rel))
        for name in files:
            path = os.path.join(parent, name)
            data = Path(path).read_bytes()
            rel = os.fsencode(os.path.normpath(os.path.join(base, name)))
            executable = 1 if os.stat(path).st_mode & 0o111 else 0
            record = struct.pack(">BI", 1, len(rel)) + rel
            record += struct.pack(">BQ", executable, len(data)) + hashlib.sha256(data).digest()
            found.append((rel, record))
    found.sort()
    return (
        b"taonet program tree manifest v1\n"
        + struct.pack(">I", len(found))
        + b"".join(record for _, record in found)
    )


def decode_manifest(data: bytes) -> list[TreeEntry]:
    """A strict reader of the manifest, to show that it is unambiguous: every manifest
    reads back as exactly the entries it was made from, with no bytes left over."""
    assert data.startswith(MANIFEST_MAGIC)
    offset = len(MANIFEST_MAGIC)
    (count,) = struct.unpack_from(">I", data, offset)
    offset += 4
    entries = []
    for _ in range(count):
        kind, length = struct.unpack_from(">BI", data, offset)
        offset += 5
        path = data[offset : offset + length]
        assert len(path) == length
        offset += length
        if kind == FILE:
            executable, size = struct.unpack_from(">BQ", data, offset)
            offset += 9
            digest = data[offset : offset + 32]
            assert len(digest) == 32
            offset += 32
            entries.append(TreeEntry(path, FILE, bool(executable), size, digest))
        else:
            assert kind == DIRECTORY
            entries.append(TreeEntry(path, DIRECTORY))
    assert offset == len(data)
    return entries


async def prepare(
    source: Path | str,
    programs_dir: Path,
    *,
    uid: int = 0,
    gid: int = 0,
    groups: Sequence[int] = (),
    entry: str | None = "main.py",
    limits: TreeLimits = DEFAULT_LIMITS,
    max_size: int = 1 << 30,
) -> PreparedProgram:
    with trio.fail_after(TIMEOUT):
        return await prepare_program(
            source,
            programs_dir,
            uid=uid,
            gid=gid,
            groups=groups,
            entry=entry,
            tree_limits=limits,
            max_size=max_size,
        )


def copied_files(prepared: PreparedProgram) -> dict[str, bytes]:
    assert prepared.root is not None
    found = {}
    for parent, _, files in os.walk(prepared.root):
        for name in files:
            path = Path(parent) / name
            found[str(path.relative_to(prepared.root))] = path.read_bytes()
    return found


def leftovers(programs_dir: Path) -> list[str]:
    return sorted(os.listdir(programs_dir)) if programs_dir.exists() else []


async def run_copy(
    prepared: PreparedProgram, *, uid: int, gid: int, cwd: str | None = None
) -> tuple[int, str, str]:
    """Run the prepared program to its end as (uid, gid): status, stdout, stderr."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        process = await spawn_program(
            prepared,
            args=[],
            env={"PATH": "/usr/bin:/bin"},
            cwd=cwd,
            uid=uid,
            gid=gid,
            channel=None,
            stdout=out_w,
            stderr=err_w,
        )
    finally:
        os.close(out_w)
        os.close(err_w)
    outputs: list[bytes] = [b"", b""]

    async def drain(index: int, fd: int) -> None:
        async with trio.lowlevel.FdStream(fd) as stream:
            while chunk := await stream.receive_some(65536):
                outputs[index] += chunk

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, 0, out_r)
        nursery.start_soon(drain, 1, err_r)
        status = await process.wait()
    return status, outputs[0].decode(), outputs[1].decode()


def temporary_dir(mode: int, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    yield path
    for parent, dirs, _ in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(parent, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def programs_dir(tmp_path: Path) -> Path:
    return tmp_path / "programs"


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A directory any uid can traverse (pytest's tmp_path is private to its user)."""
    yield from temporary_dir(0o711, "taonet-test-trees-")


# -- the manifest -------------------------------------------------------------------------


_names = st.binary(min_size=1, max_size=6).filter(
    lambda name: b"/" not in name and b"\0" not in name and name not in (b".", b"..")
)


@st.composite
def _entries(draw: st.DrawFn) -> list[TreeEntry]:
    paths = draw(st.sets(st.lists(_names, min_size=1, max_size=3).map(b"/".join), max_size=6))
    entries = []
    for path in paths:
        if draw(st.booleans()):
            entries.append(TreeEntry(path, DIRECTORY))
        else:
            entries.append(
                TreeEntry(
                    path,
                    FILE,
                    draw(st.booleans()),
                    draw(st.integers(0, 2**64 - 1)),
                    draw(st.binary(min_size=32, max_size=32)),
                )
            )
    return entries


@given(_entries(), _entries())
def test_the_manifest_reads_back_as_exactly_its_tree(
    first: list[TreeEntry], second: list[TreeEntry]
) -> None:
    # Unambiguous: each manifest decodes to its own entries and nothing else, so
    # two different trees can only share a hash through a SHA-256 collision.
    for entries in (first, second):
        assert decode_manifest(encode_manifest(entries)) == sorted(entries, key=lambda e: e.path)
    if sorted(first, key=lambda e: e.path) != sorted(second, key=lambda e: e.path):
        assert encode_manifest(first) != encode_manifest(second)


def test_the_manifest_refuses_what_is_not_a_tree() -> None:
    digest = bytes(32)
    for bad in (b"", b"/abs", b"a//b", b"a/../b", b"./a", b"a\0b"):
        with pytest.raises(ValueError, match="not a relative path"):
            encode_manifest([TreeEntry(bad, FILE, False, 0, digest)])
    with pytest.raises(ValueError, match="twice"):
        encode_manifest([TreeEntry(b"a", FILE, False, 0, digest), TreeEntry(b"a", DIRECTORY)])
    with pytest.raises(ValueError, match="digest"):
        encode_manifest([TreeEntry(b"a", FILE, False, 0, b"short")])


def _naive(files: dict[str, bytes]) -> bytes:
    """What a careless manifest would hash: the names, then the contents, run together."""
    names = b"".join(name.encode() for name in sorted(files))
    contents = b"".join(files[name] for name in sorted(files))
    return hashlib.sha256(names + contents).digest()


#: Pairs of different trees that a careless encoding (names and contents run
#: together) cannot tell apart: bytes moved between a name and a content, or
#: between two files.
COLLIDING_PAIRS = [
    ({"ab": b"c"}, {"a": b"bc"}),
    ({"f1": b"xy", "f2": b"z"}, {"f1": b"x", "f2": b"yz"}),
]


@pytest.mark.parametrize(("first", "second"), COLLIDING_PAIRS)
async def test_trees_built_to_collide_get_different_names(
    tmp_path: Path, programs_dir: Path, first: dict[str, bytes], second: dict[str, bytes]
) -> None:
    assert _naive(first) == _naive(second)  # the attack works on a careless encoding
    names = []
    for index, files in enumerate((first, second)):
        tree = make_tree(tmp_path / f"tree{index}", dict(files), 0o755)
        prepared = await prepare(tree, programs_dir, entry=sorted(files)[0])
        assert prepared.program_hash == hashlib.sha256(spec_manifest(tree)).digest()
        names.append(prepared.subprin())
    assert names[0] != names[1]


async def test_the_shape_of_a_tree_is_measured(tmp_path: Path, programs_dir: Path) -> None:
    # A file for an empty directory, an execute bit, an empty directory more: all
    # change the name, though no file's bytes differ.
    run = "#!/bin/sh\n"
    variants: list[dict[str, bytes | str | None]] = [
        {"run": run, "d": b""},
        {"run": run, "d": None},
        {"run": run},
        {"run": run, "e": None},
    ]
    hashes = set()
    for index, files in enumerate(variants):
        tree = make_tree(tmp_path / f"v{index}", files, 0o755)
        hashes.add((await prepare(tree, programs_dir, entry="run")).program_hash)
    not_executable = make_tree(tmp_path / "exec", variants[0], 0o755)
    (not_executable / "d").chmod(0o644)
    hashes.add((await prepare(not_executable, programs_dir, entry="run")).program_hash)
    assert len(hashes) == len(variants) + 1


async def test_a_directory_is_never_named_as_a_file(tmp_path: Path, programs_dir: Path) -> None:
    # The attack: a single file whose bytes are a tree's manifest has the same
    # SHA-256 as the tree. The names still differ: Program([h]) for the file,
    # ProgramTree([h], "entry") for the directory.
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\necho tree\n"}, mode=0o755)
    forged = tmp_path / "forged"
    forged.write_bytes(spec_manifest(tree))
    forged.chmod(0o755)
    as_tree = await prepare(tree, programs_dir)
    as_file = await prepare(forged, programs_dir, entry=None)
    assert as_tree.program_hash == as_file.program_hash
    assert as_file.subprin() == program_subprin(as_file.program_hash)
    assert as_tree.subprin() != as_file.subprin()
    assert as_tree.subprin().exts[0].name == "ProgramTree"
    assert as_tree.subprin() == auth.SubPrin(
        (auth.PrinExt("ProgramTree", (auth.Bytes(as_tree.program_hash), auth.Str("main.py"))),)
    )


# -- the copy -----------------------------------------------------------------------------


SERVICE: dict[str, bytes | str | None] = {
    "main.py": "#!/bin/sh\necho main\n",
    "helper.py": "X = 1\n",
    "pkg/__init__.py": "",
    "pkg/mod.py": "Y = 2\n",
    "pkg/data/config.json": '{"a": 1}\n',
    "empty": None,
    "__pycache__/helper.cpython-311.pyc": b"\x00stale bytecode",
    "pkg/__pycache__/mod.cpython-311.pyc": b"\x00stale bytecode",
}


async def test_a_tree_is_copied_and_measured_file_by_file(
    tmp_path: Path, programs_dir: Path
) -> None:
    tree = make_tree(tmp_path / "service", SERVICE)
    (tree / "main.py").chmod(0o755)
    prepared = await prepare(tree, programs_dir)
    assert prepared.root == prepared.directory / "service"
    assert prepared.path == prepared.root / "main.py"
    assert prepared.entry == "main.py"
    # The name is the manifest's hash, as the format describes it, of what was copied.
    assert prepared.program_hash == hashlib.sha256(spec_manifest(tree)).digest()
    assert prepared.program_hash == hashlib.sha256(spec_manifest(prepared.root)).digest()
    expected = {
        rel: (content.encode() if isinstance(content, str) else content)
        for rel, content in SERVICE.items()
        if content is not None and "__pycache__" not in rel
    }
    assert copied_files(prepared) == expected
    assert prepared.size == sum(len(data) for data in expected.values())
    assert not (prepared.root / "__pycache__").exists()  # caches are skipped
    assert (prepared.root / "empty").is_dir()
    # The host's own program: read-only, executable where the source was.
    modes = {
        str(path.relative_to(prepared.root)): stat.S_IMODE(path.stat().st_mode)
        for path in [prepared.root, *prepared.root.rglob("*")]
    }
    assert modes["."] == modes["pkg"] == modes["empty"] == 0o500
    assert modes["main.py"] == 0o500
    assert modes["helper.py"] == modes["pkg/data/config.json"] == 0o400
    status, out, _ = await run_copy(prepared, uid=os.geteuid(), gid=os.getegid())
    assert (status, out) == (0, "main\n")
    prepared.cleanup()
    assert leftovers(programs_dir) == []


async def test_the_copy_is_what_was_measured_not_the_source_later(
    tmp_path: Path, programs_dir: Path
) -> None:
    tree = make_tree(tmp_path / "service", {"main.py": "#!/bin/sh\ncat data\n", "data": "old\n"})
    (tree / "main.py").chmod(0o755)
    prepared = await prepare(tree, programs_dir)
    (tree / "data").write_text("new\n")
    (tree / "added").write_text("added\n")
    with trio.fail_after(TIMEOUT):
        status, out, _ = await run_copy(
            prepared, uid=os.geteuid(), gid=os.getegid(), cwd=str(prepared.root)
        )
    assert (status, out) == (0, "old\n")
    assert sorted(copied_files(prepared)) == ["data", "main.py"]
    again = await prepare(tree, programs_dir)
    assert again.program_hash != prepared.program_hash


# -- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_link",
    [
        pytest.param(
            lambda tree, out: os.symlink(out / "secret", tree / "link.py"), id="to-a-file"
        ),
        pytest.param(lambda tree, out: os.symlink(out, tree / "lib"), id="to-a-directory"),
        pytest.param(lambda tree, out: os.symlink("../out/secret", tree / "rel"), id="relative"),
        pytest.param(lambda tree, out: os.symlink("main.py", tree / "inside"), id="inside"),
        pytest.param(lambda tree, out: os.symlink("/", tree / "pkg" / "root"), id="deeper"),
    ],
)
async def test_symbolic_links_in_a_tree_are_refused(
    tmp_path: Path, programs_dir: Path, make_link: object
) -> None:
    # The attack: a link in the tree that leads out of it (to a file the host can
    # read and the caller cannot, say). Links are not measured: any link is refused.
    out = tmp_path / "out"
    out.mkdir()
    (out / "secret").write_bytes(SECRET)
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n", "pkg/mod.py": ""}, 0o755)
    make_link(tree, out)  # type: ignore[operator]
    with pytest.raises(HostError, match="is a symbolic link: links are not measured"):
        await prepare(tree, programs_dir)
    assert leftovers(programs_dir) == []


async def test_fifos_sockets_and_devices_in_a_tree_are_refused(
    tmp_path: Path, programs_dir: Path
) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    os.mkfifo(tree / "fifo")  # nobody writes: opening it must not hang the host
    with pytest.raises(HostError, match="is a FIFO"):
        await prepare(tree, programs_dir)
    os.unlink(tree / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "sock"))
        with pytest.raises(HostError, match="is a socket"):
            await prepare(tree, programs_dir)
    os.unlink(tree / "sock")
    if ROOT:
        os.mknod(tree / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        with pytest.raises(HostError, match="is a character device"):
            await prepare(tree, programs_dir)
    assert leftovers(programs_dir) == []


async def test_a_hard_link_is_copied_as_the_file_it_is(tmp_path: Path, programs_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("shared\n")
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    os.link(outside, tree / "linked")
    prepared = await prepare(tree, programs_dir)
    outside.write_text("changed later\n")  # the other name changes the source, not the copy
    assert copied_files(prepared)["linked"] == b"shared\n"
    assert os.stat(prepared.root / "linked").st_nlink == 1  # type: ignore[operator]


@pytest.mark.parametrize(
    "entry",
    ["../outside.py", "/etc/passwd", "a//b.py", "./main.py", "pkg/../main.py", "", "x" * 256],
)
async def test_an_entry_outside_the_tree_is_refused(
    tmp_path: Path, programs_dir: Path, entry: str
) -> None:
    (tmp_path / "outside.py").write_text("print('outside')\n")
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    with pytest.raises(HostError, match="must be a relative path"):
        await prepare(tree, programs_dir, entry=entry)


async def test_the_entry_must_be_a_file_of_the_tree(tmp_path: Path, programs_dir: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n", "pkg/mod.py": ""}, 0o755)
    with pytest.raises(HostError, match=r"has no file missing\.py to run"):
        await prepare(tree, programs_dir, entry="missing.py")
    with pytest.raises(HostError, match="has no file pkg to run"):
        await prepare(tree, programs_dir, entry="pkg")
    with pytest.raises(HostError, match=r"no file __main__.py to run \(name one"):
        await prepare(tree, programs_dir, entry=None)
    make_tree(tree, {"__main__.py": "#!/bin/sh\n"}, 0o755)
    by_default = await prepare(tree, programs_dir, entry=None)
    assert by_default.entry == "__main__.py"
    by_default.cleanup()
    with pytest.raises(HostError, match="is a file: an entry is for a program directory"):
        await prepare(tree / "main.py", programs_dir, entry="main.py")
    # An entry the kernel is to run must be executable, as a single file must.
    (tree / "main.py").chmod(0o644)
    with pytest.raises(AuthorizationError, match="may not execute"):
        await prepare(tree, programs_dir)
    assert leftovers(programs_dir) == []  # no refusal leaves a copy behind


# -- bounds ---------------------------------------------------------------------------------


async def test_too_many_files_are_refused_as_they_are_counted(
    tmp_path: Path, programs_dir: Path
) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    for index in range(20):
        (tree / f"f{index}").write_bytes(b"")
    limits = TreeLimits(max_files=21)
    await prepare(tree, programs_dir, limits=limits)
    (tree / "one-more").write_bytes(b"")
    with pytest.raises(HostError, match="more than 21 files and directories"):
        await prepare(tree, programs_dir, limits=limits)


@pytest.mark.slow
async def test_a_directory_of_100k_files_is_refused(tmp_path: Path, programs_dir: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    crowd = tree / "crowd"
    crowd.mkdir()
    fd = os.open(crowd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(100_000):
            os.close(os.open(f"{index}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    with pytest.raises(HostError, match="more than 10000 files and directories"):
        await prepare(tree, programs_dir)
    assert leftovers(programs_dir) == []


async def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path, programs_dir: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    (tree / "huge.bin").touch()
    os.truncate(tree / "huge.bin", 2 << 30)  # sparse: 2 GiB that take no disk
    with pytest.raises(HostError, match="over its limit of 1073741824 bytes"):
        await prepare(tree, programs_dir)
    assert leftovers(programs_dir) == []


async def test_the_bytes_of_all_files_are_bounded_together(
    tmp_path: Path, programs_dir: Path
) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n", "a": "x" * 600}, 0o755)
    await prepare(tree, programs_dir, limits=TreeLimits(max_bytes=1000))
    (tree / "b").write_text("y" * 600)
    with pytest.raises(HostError, match="over its limit of 1000 bytes"):
        await prepare(tree, programs_dir, limits=TreeLimits(max_bytes=1000))
    # Another user's share (max_size) bounds it too, as charged on disk (F4).
    with pytest.raises(HostError, match="would take over 900 bytes on disk"):
        await prepare(tree, programs_dir, max_size=900)


async def test_depth_and_name_length_are_bounded(tmp_path: Path, programs_dir: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    deep = tree.joinpath(*["d"] * 4)
    deep.mkdir(parents=True)
    await prepare(tree, programs_dir, limits=TreeLimits(max_depth=4))
    (deep / "d").mkdir()
    with pytest.raises(HostError, match="more than 4 directories deep"):
        await prepare(tree, programs_dir, limits=TreeLimits(max_depth=4))
    shutil.rmtree(tree / "d")
    (tree / ("n" * 17)).write_text("")
    with pytest.raises(HostError, match="name of 17 bytes, over the limit of 16"):
        await prepare(tree, programs_dir, limits=TreeLimits(max_name_bytes=16))


# -- races ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_entries_swapped_during_the_walk_never_bring_in_outside_files(
    tmp_path: Path, programs_dir: Path
) -> None:
    # The attack: while the host walks the tree, swap a file for a link to a file
    # outside it, and a directory for a link to a directory outside it. Every start
    # must be refused or copy only files of the tree, and be named for what it copied.
    outside = tmp_path / "outside"
    make_tree(outside, {"secret": SECRET, "mod.py": SECRET})
    tree = make_tree(
        tmp_path / "tree",
        {"main.py": "#!/bin/sh\n", "x": "benign\n", "pkg/mod.py": "benign\n"},
        0o755,
    )
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            os.symlink(outside / "secret", tree / "x.new")
            os.replace(tree / "x.new", tree / "x")
            (tree / "x.new").write_text("benign\n")
            os.replace(tree / "x.new", tree / "x")
            os.rename(tree / "pkg", tree / "pkg.away")
            os.symlink(outside, tree / "pkg")
            os.unlink(tree / "pkg")
            os.rename(tree / "pkg.away", tree / "pkg")
            swaps += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes = {"copied": 0, "refused": 0}
    try:
        for _ in range(150):
            try:
                prepared = await prepare(tree, programs_dir)
            except HostError:
                outcomes["refused"] += 1
                continue
            outcomes["copied"] += 1
            files = copied_files(prepared)
            assert all(SECRET not in data for data in files.values()), files
            assert prepared.root is not None
            assert prepared.program_hash == hashlib.sha256(spec_manifest(prepared.root)).digest()
            prepared.cleanup()
    finally:
        stop.set()
        thread.join()
    assert swaps > 0
    assert sum(outcomes.values()) == 150


# -- other users --------------------------------------------------------------------------


@pytest.fixture
def src_dir(base_dir: Path) -> Path:
    path = base_dir / "src"
    path.mkdir()
    path.chmod(0o755)
    return path


def set_acl(path: Path, entries: list[tuple[int, int, int]]) -> None:
    os.setxattr(path, "system.posix_acl_access", encode_acl(entries))


@needs_root
async def test_a_file_the_caller_cannot_read_is_refused(src_dir: Path, base_dir: Path) -> None:
    # The attack: name a tree holding a file only root may read; the host (root)
    # could read it, the caller could not, so the host must not copy it for them.
    programs_dir = base_dir / "programs"
    tree = make_tree(src_dir / "tree", {"main.py": "#!/bin/sh\n", "pkg/mod.py": ""}, 0o755)
    (tree / "pkg").chmod(0o755)
    (tree / "pkg" / "secret.key").write_bytes(SECRET)
    (tree / "pkg" / "secret.key").chmod(0o600)
    with pytest.raises(AuthorizationError, match=r"may not read .*pkg/secret.key \(mode 0600"):
        await prepare(tree, programs_dir, uid=NOBODY, gid=NOBODY)
    # As the kernel decides: an ACL entry that lets this uid read makes it readable...
    set_acl(
        tree / "pkg" / "secret.key",
        [
            (USER_OBJ, 6, NO_ID),
            (USER, 4, NOBODY),
            (GROUP_OBJ, 0, NO_ID),
            (MASK, 4, NO_ID),
            (OTHER, 0, NO_ID),
        ],
    )
    await prepare(tree, programs_dir, uid=NOBODY, gid=NOBODY)
    # ...unless the mask takes it away again.
    set_acl(
        tree / "pkg" / "secret.key",
        [
            (USER_OBJ, 6, NO_ID),
            (USER, 4, NOBODY),
            (GROUP_OBJ, 0, NO_ID),
            (MASK, 0, NO_ID),
            (OTHER, 0, NO_ID),
        ],
    )
    with pytest.raises(AuthorizationError, match="may not read"):
        await prepare(tree, programs_dir, uid=NOBODY, gid=NOBODY)
    # A directory the caller may search but not list is refused too.
    (tree / "pkg" / "secret.key").unlink()
    (tree / "pkg").chmod(0o711)
    with pytest.raises(AuthorizationError, match=r"may not list and search the directory .*pkg"):
        await prepare(tree, programs_dir, uid=NOBODY, gid=NOBODY)
    # And an entry the caller may read but not execute, for the kernel to run.
    (tree / "pkg").chmod(0o755)
    (tree / "main.py").chmod(0o744)
    with pytest.raises(AuthorizationError, match="may not execute"):
        await prepare(tree, programs_dir, uid=NOBODY, gid=NOBODY)


TREE_CHECK = """#!/bin/sh
cat data/greeting
ls sub
pwd
touch new 2>/dev/null && echo "wrote a file"
echo more >>data/greeting 2>/dev/null && echo "changed a file"
echo done
"""


@needs_root
async def test_a_copy_for_another_user_is_theirs_alone(src_dir: Path, base_dir: Path) -> None:
    programs_dir = base_dir / "programs"
    tree = make_tree(
        src_dir / "tree",
        {"main.sh": TREE_CHECK, "data/greeting": "hello\n", "sub/file": ""},
        0o644,
    )
    for directory in ("data", "sub"):
        (tree / directory).chmod(0o755)
    (tree / "main.sh").chmod(0o755)
    prepared = await prepare(tree, programs_dir, uid=NOBODY, gid=NOBODY, entry="main.sh")
    assert prepared.root is not None
    for path in [prepared.root, prepared.root / "data", prepared.root / "sub"]:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o550, 0, NOBODY)
    assert stat.S_IMODE((prepared.root / "data" / "greeting").stat().st_mode) == 0o440
    assert stat.S_IMODE((prepared.root / "main.sh").stat().st_mode) == 0o550
    with trio.fail_after(TIMEOUT):
        status, out, err = await run_copy(prepared, uid=NOBODY, gid=NOBODY, cwd=str(prepared.root))
        assert status == 0, err
        # It reads and lists its copy, in its copy, and can change nothing.
        assert out.splitlines() == ["hello", "file", str(prepared.root), "done"]
        prying = await trio.run_process(
            [
                "/bin/sh",
                "-c",
                'ls "$1" || cat "$1/data/greeting"; echo done',
                "pry",
                str(prepared.root),
            ],
            cwd="/",
            user=1,
            group=1,
            extra_groups=[],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert prying.stdout.decode().splitlines() == ["done"]
    assert prying.stderr.decode().count("Permission denied") == 2


@pytest.fixture
def noexec_dir(base_dir: Path) -> Iterator[Path]:
    path = base_dir / "noexec"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,mode=0755,size=1m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@needs_root
async def test_a_file_on_a_noexec_mount_in_a_tree_is_refused(
    src_dir: Path, base_dir: Path, noexec_dir: Path
) -> None:
    # The attack: a tree whose files are on a noexec mount; copied, they would run.
    programs_dir = base_dir / "programs"
    tree = make_tree(noexec_dir / "tree", {"main.py": "#!/bin/sh\necho ran\n"}, 0o755)
    for uid in (NOBODY, 0):
        with pytest.raises(AuthorizationError, match="mounted noexec"):
            await prepare(tree, programs_dir, uid=uid, gid=uid)
    assert leftovers(programs_dir) == []


CHECKOUT = Path(__file__).resolve().parents[2]
AS_ITS_OWN_HOST = """
import asyncio, os, stat, sys
from pathlib import Path
sys.path[:0] = sys.argv[3:]
import trio
from taonet.hosts.linux._process import prepare_program

async def main():
    prepared = await prepare_program(
        sys.argv[1], Path(sys.argv[2]), uid=os.geteuid(), gid=os.getegid(), entry="run.sh"
    )
    print(oct(stat.S_IMODE(prepared.root.stat().st_mode)), prepared.root.stat().st_uid)
    print(sorted(os.listdir(prepared.root / "pkg")))
    prepared.cleanup()
    print(os.listdir(sys.argv[2]))

trio.run(main)
"""


def python_for(uid: int) -> str:
    """An interpreter of this Python version that ``uid`` can run (else skip)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        try:
            works = subprocess.run(
                [candidate, "-c", f"import sys; assert sys.version.startswith('{version}')"],
                user=uid,
                group=uid,
                extra_groups=[],
                cwd="/",
                capture_output=True,
                check=False,
            )
        except OSError:  # it may not even execute it
            continue
        if works.returncode == 0:
            return candidate
    pytest.skip(f"no Python {version} that uid {uid} may run")


@needs_root
async def test_a_host_that_is_not_root_removes_its_read_only_copies(base_dir: Path) -> None:
    # A copy's directories are read-only (0500) even to their owner: a host that is
    # not root must make them writable again to remove them, or leak every copy.
    work = base_dir / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    tree = make_tree(work / "tree", {"run.sh": "#!/bin/sh\n", "pkg/mod.py": "", "pkg/d": None})
    (tree / "run.sh").chmod(0o755)
    for path in [tree, *tree.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
        if path.is_dir():
            path.chmod(0o755)
    site = [p for p in sys.path if p.endswith("site-packages")]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [
                python_for(NOBODY),
                "-c",
                AS_ITS_OWN_HOST,
                str(tree),
                str(work / "programs"),
                str(CHECKOUT),
                *site,
            ],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [f"0o500 {NOBODY}", "['d', 'mod.py']", "[]"]


def test_the_names_of_programs_with_ids_and_interpreters() -> None:
    from taonet.hosts.linux._interpreters import Interpreter

    h, i = bytes(range(32)), bytes(range(32, 64))
    python = Interpreter("python3", "/usr/bin/python3", i, (0, 0, 0, 0, 0))
    file = PreparedProgram(path=Path("/p/x"), directory=Path("/p"), program_hash=h, source="x")
    script = PreparedProgram(
        path=Path("/p/x"), directory=Path("/p"), program_hash=h, source="x", interpreter=python
    )
    tree = PreparedProgram(
        path=Path("/p/t/main.py"),
        directory=Path("/p"),
        program_hash=h,
        source="t",
        root=Path("/p/t"),
        entry="main.py",
        interpreter=python,
    )
    expected = {
        (file, 0): f"Program([{h.hex()}])",
        (file, 7): f"Program(7, [{h.hex()}])",
        (script, 0): f'Script([{h.hex()}], "/usr/bin/python3", [{i.hex()}])',
        (script, 7): f'Script(7, [{h.hex()}], "/usr/bin/python3", [{i.hex()}])',
        (tree, 0): f'ProgramTree([{h.hex()}], "main.py", "/usr/bin/python3", [{i.hex()}])',
        (tree, 7): f'ProgramTree(7, [{h.hex()}], "main.py", "/usr/bin/python3", [{i.hex()}])',
    }
    for (prepared, program_id), text in expected.items():
        assert str(prepared.subprin(program_id=program_id)) == "." + text
    assert tree.argv(["a"])[:3] == ["/usr/bin/python3", "-I", "-B"]
    assert tree.argv(["a"])[-2:] == ["/p/t/main.py", "a"]
    assert script.argv(["a"]) == ["/usr/bin/python3", "-I", "-B", "/p/x", "a"]
    assert file.argv(["a"]) == ["/p/x", "a"]


async def test_a_refusal_names_a_file_whose_name_is_not_utf8(
    tmp_path: Path, programs_dir: Path
) -> None:
    # The message goes back over the admin socket as text: a name that is not
    # UTF-8 is shown escaped, and a tree of such names is measured by their bytes.
    tree = make_tree(tmp_path / "tree", {"main.py": "#!/bin/sh\n"}, 0o755)
    raw = os.fsencode(tree) + b"/\xff\xfe.py"
    with open(raw, "wb") as f:  # noqa: ASYNC230 (a test's setup)
        f.write(b"data")
    prepared = await prepare(tree, programs_dir)
    assert prepared.program_hash == hashlib.sha256(spec_manifest(tree)).digest()
    os.symlink(b"/etc/passwd", os.fsencode(tree) + b"/\xff")
    with pytest.raises(HostError) as refused:
        await prepare(tree, programs_dir)
    assert "\\xff is a symbolic link" in str(refused.value)
    str(refused.value).encode("utf-8")  # text that goes on the wire as it is


@pytest.fixture
def no_acl_dir(base_dir: Path) -> Iterator[Path]:
    """A ramfs (a real filesystem without ACLs) mounted here."""
    path = base_dir / "ramfs"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "ramfs", "-o", "mode=0755", "ramfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a ramfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@needs_root
async def test_without_acls_a_tree_copy_falls_back_to_the_group(
    src_dir: Path, no_acl_dir: Path
) -> None:
    tree = make_tree(src_dir / "tree", {"main.sh": TREE_CHECK, "data/greeting": "hi\n"}, 0o644)
    (tree / "data").chmod(0o755)
    (tree / "main.sh").chmod(0o755)
    prepared = await prepare(tree, no_acl_dir / "programs", uid=NOBODY, gid=NOBODY, entry="main.sh")
    assert prepared.root is not None
    modes = {
        str(path.relative_to(prepared.root)): (
            stat.S_IMODE(path.stat().st_mode),
            path.stat().st_uid,
            path.stat().st_gid,
        )
        for path in [prepared.root, *prepared.root.rglob("*")]
    }
    assert modes == {
        ".": (0o550, 0, NOBODY),
        "data": (0o550, 0, NOBODY),
        "data/greeting": (0o440, 0, NOBODY),
        "main.sh": (0o550, 0, NOBODY),
    }
    with trio.fail_after(TIMEOUT):
        status, out, err = await run_copy(prepared, uid=NOBODY, gid=NOBODY, cwd=str(prepared.root))
    assert status == 0, err
    assert out.splitlines()[0] == "hi"
    assert "wrote a file" not in out
    assert "changed a file" not in out
