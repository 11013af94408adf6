"""simpleexample end to end: initialization, then operation from sealed state; the secret
read from the secret server, rotated by the operator, and the watch event that follows."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from taonet import ConfigError
from taonet.crypto import KdfParams
from taonet_examples.simpleexample import simpleserver
from taonet_examples.simpleexample.demo import run_demo
from tests.examples.conftest import RunTwice, TaonetDemo

NAME = "/simpleexample/secret"


def _index(lines: list[str], text: str) -> int:
    """The index of the one line holding ``text``."""
    found = [i for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


def _rotation(lines: list[str], read: int, rotated: int) -> None:
    """simpleserver read epoch ``read``, handed it out, then the operator rotated it to
    ``rotated`` and simpleserver's watch brought it the new epoch before the revocation."""
    got = _index(
        lines, f"[simpleserver] read its secret {NAME} epoch {read} from the secret server"
    )
    handed = _index(lines, f"[simpleserver] the guard allows it: sending the secret (epoch {read})")
    received = _index(lines, "[simpleclient] received the secret ")
    rotate = _index(lines, f"[operator] taonet secret rotate {NAME}")
    done = _index(lines, f"[operator] rotated {NAME} to epoch {rotated}")
    watch = _index(
        lines,
        f"[simpleserver] watch: {NAME} rotated (epoch {rotated}); read it again:"
        f" hands out epoch {rotated} from now on",
    )
    revocation = _index(lines, "== Revocation")
    assert got < handed < received < rotate < done < revocation
    assert rotate < watch < revocation
    # The revoked instance's request came after the rotation: it got the new epoch.
    after = _index(lines, f"the guard allows it: sending the secret (epoch {rotated})")
    assert revocation < after


async def test_two_runs_initialize_then_reuse_sealed_state(run_twice: RunTwice) -> None:
    with trio.fail_after(60):
        runs = await run_twice(run_demo)
    first, second = runs.first, runs.second
    assert any(line.startswith("== Initialization") for line in first)
    assert any("issued certificate serial" in line for line in first)
    assert any(line.startswith("== Operation") for line in second)
    assert not any("issued certificate serial" in line for line in second)
    assert any("unsealed key and certificate" in line for line in second)
    assert any("the guard allows it" in line for line in second)
    # The secret server is provisioned like the others, and unseals its state later.
    assert any(line.startswith("[secret server] domain service issued") for line in first)
    assert any(line.startswith("[secret server] unsealed key and certificate") for line in second)
    # simpleserver has the server make its secret once, then reads it; each run rotates.
    made = f"[simpleserver] asked the secret server to make its secret {NAME} (a random key)"
    assert made in first
    assert made not in second
    _rotation(first, read=1, rotated=2)
    _rotation(second, read=2, rotated=3)
    assert runs.secrets[0].hex() in _line(first, "[simpleclient] received the secret")
    assert runs.secrets[1].hex() in _line(second, "[simpleclient] received the secret")


def _line(lines: list[str], text: str) -> str:
    return lines[_index(lines, text)]


def test_taonet_demo_command(taonet_demo: TaonetDemo) -> None:
    taonet_demo(timeout=120)


async def test_a_directory_made_for_other_programs_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        await run_demo(tmp_path / "demo", say=_quiet, kdf=KdfParams.for_tests())
    # Another version of simpleserver (one byte more): the domain's guard names the old hash.
    changed = _changed_copy(Path(simpleserver.__file__ or ""), tmp_path)
    monkeypatch.setattr(simpleserver, "__file__", str(changed))
    with trio.fail_after(60), pytest.raises(ConfigError) as raised:
        await run_demo(tmp_path / "demo", say=_quiet)
    assert "made for other versions of the programs (simpleserver" in str(raised.value)
    assert "remove that directory" in str(raised.value)


def _changed_copy(source: Path, directory: Path) -> Path:
    copy = directory / source.name
    copy.write_bytes(source.read_bytes() + b"\n")
    return copy


def _quiet(_: str) -> None:
    """Say nothing."""
