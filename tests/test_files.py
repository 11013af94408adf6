"""atomic_write and read_file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NoReturn

import pytest

from taonet import ConfigError
from taonet._files import atomic_write, read_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_new_file_default_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    old = os.umask(0)
    try:
        atomic_write(target, b"hello")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"hello"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
def test_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    target = tmp_path / "f"
    old = os.umask(umask)
    try:
        atomic_write(target, b"x", mode=mode)
    finally:
        os.umask(old)
    assert _mode(target) == mode


def test_replaces_existing_and_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o666)
    atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_accepts_str_path_and_empty_data(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "e"), b"")
    assert (tmp_path / "e").read_bytes() == b""


#: A step of atomic_write that fails: the os function that fails, how, and what the
#: ConfigError must say.
FAILED_STEPS = {
    "rename": ("replace", OSError(5, "Input/output error"), r"cannot write .*Input/output error"),
    "write": ("write", OSError(28, "No space left on device"), "No space left"),
}


@pytest.mark.parametrize("step", sorted(FAILED_STEPS))
def test_a_failed_step_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    function, error, message = FAILED_STEPS[step]
    target = tmp_path / "f"
    target.write_bytes(b"old contents")

    def failing(*args: object) -> NoReturn:
        raise error

    monkeypatch.setattr(os, function, failing)
    with pytest.raises(ConfigError, match=message) as info:
        atomic_write(target, b"new contents")
    monkeypatch.undo()
    assert info.value.__cause__ is error
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def dribble(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data)[:3])

    monkeypatch.setattr(os, "write", dribble)
    atomic_write(tmp_path / "f", b"0123456789abcdef")
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789abcdef"


def test_non_os_error_cleans_up_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "f", b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write"):
        atomic_write(tmp_path / "nope" / "f", b"x")


def test_read_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    assert read_file(p, limit=10) == b"0123456789"
    assert read_file(str(p), limit=100) == b"0123456789"
    with pytest.raises(ConfigError, match="over the 9-byte limit"):
        read_file(p, limit=9)
    (tmp_path / "empty").write_bytes(b"")
    assert read_file(tmp_path / "empty", limit=0) == b""


def test_read_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file at"):
        read_file(tmp_path / "absent", limit=10)
    with pytest.raises(ConfigError, match="it is a directory, not a regular file"):
        read_file(tmp_path, limit=10)
    with pytest.raises(ValueError, match="limit"):
        read_file(tmp_path / "absent", limit=-1)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda tmp: Path("/dev/zero"), "a character device"),
        (lambda tmp: Path("/dev/null"), "a character device"),
        (lambda tmp: (os.mkfifo(tmp / "fifo"), tmp / "fifo")[1], "a FIFO"),  # type: ignore[func-returns-value]
    ],
    ids=["dev-zero", "dev-null", "fifo-nobody-writes"],
)
def test_read_file_refuses_at_once_what_is_not_a_regular_file(
    tmp_path: Path, make: object, kind: str
) -> None:
    """Opening a FIFO nobody writes, or reading /dev/zero, would block or never end."""
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=f"cannot read {path}: it is {kind}, not a regular"):
        read_file(path, limit=1 << 20)
