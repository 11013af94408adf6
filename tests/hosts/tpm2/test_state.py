"""A TPM host's state directory edited by hand: a clear ConfigError or HostError, no crash."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from taonet import ConfigError, HostError, TaoError
from tests.hosts.tpm2.tpm2_host_helpers import make_host


def _edit_json(name: str, change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        obj = json.loads((directory / name).read_text())
        change(obj)
        (directory / name).write_text(json.dumps(obj))

    return edit


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).write_bytes(data)

    return edit


def _flip(name: str, pos: int) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        data = bytearray((directory / name).read_bytes())
        data[pos] ^= 1
        (directory / name).write_bytes(bytes(data))

    return edit


EDITS: list[tuple[str, Callable[[Path], None], type[TaoError], str]] = [
    ("config not JSON", _write("tpm2host.json", b"{oops"), ConfigError, "not valid JSON"),
    (
        "config other format",
        _edit_json("tpm2host.json", lambda o: o.update(format="x")),
        ConfigError,
        "is not a",
    ),
    ("bad PCR", _edit_json("tpm2host.json", lambda o: o.update(pcrs=[99])), ConfigError, "PCR"),
    ("no PCRs", _edit_json("tpm2host.json", lambda o: o.update(pcrs=[])), ConfigError, "PCR"),
    ("bad alg", _edit_json("tpm2host.json", lambda o: o.update(alg="dsa")), ConfigError, "alg"),
    ("bad tcti", _edit_json("tpm2host.json", lambda o: o.update(tcti=7)), ConfigError, "tcti"),
    ("huge config", _write("tpm2host.json", b" " * 100_000), ConfigError, "limit"),
    # nesting deeper than the parser's recursion limit, and deeper than the files go
    ("config nested", _write("tpm2host.json", b"[" * 20_000 + b"]" * 20_000), ConfigError, "JSON"),
    (
        "config pcrs nested",
        _edit_json("tpm2host.json", lambda o: o.update(pcrs=[[[[[[[[[0]]]]]]]]])),
        ConfigError,
        "nested too deeply",
    ),
    (
        "counters nested",
        _write("counters.json", b'{"counters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ConfigError,
        "JSON",
    ),
    (
        "counters entries nested",
        _write("counters.json", b'{"counters": ' + b"[" * 50 + b"]" * 50 + b', "mac": "x"}'),
        ConfigError,
        "nested too deeply",
    ),
    ("key truncated", _write("quote_key.pub", b"\x00\x10abc"), ConfigError, "TPM2B"),
    ("key not a key", _write("quote_key.pub", b"\x00\x02ab"), ConfigError, "quote_key.pub"),
    ("deriving cut", _write("deriving.sealed", b"\x00\x05ab"), ConfigError, "sealed TPM object"),
    # well-formed but not what the TPM made: the TPM's integrity check refuses it
    ("deriving flipped", _flip("deriving.sealed", 40), HostError, "deriving key"),
    # other PCRs than at creation: the deriving key does not unseal
    ("other PCRs", _edit_json("tpm2host.json", lambda o: o.update(pcrs=[0])), HostError, "PCR"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, swtpm_tcti: str) -> Path:
    directory = tmp_path_factory.mktemp("tpm2state") / "host"

    async def make() -> None:
        host = await make_host(directory, swtpm_tcti)
        await host.aclose()

    trio.run(make)
    return directory


@pytest.mark.parametrize(("what", "edit", "error", "match"), EDITS, ids=[e[0] for e in EDITS])
async def test_hand_edited_state(
    pristine: Path,
    tmp_path: Path,
    what: str,
    edit: Callable[[Path], None],
    error: type[TaoError],
    match: str,
) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    directory = tmp_path / "host"
    shutil.copytree(pristine, directory)
    edit(directory)
    with pytest.raises(error, match=match), trio.fail_after(60):
        await Tpm2Host.open(directory)
    # the failed open left the TPM usable: the untouched copy opens
    with trio.fail_after(60):
        host = await Tpm2Host.open(pristine)
        await host.aclose()


async def test_missing_file(pristine: Path, tmp_path: Path) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    directory = tmp_path / "host"
    shutil.copytree(pristine, directory)
    (directory / "quote_key.priv").unlink()
    with pytest.raises(ConfigError, match=r"quote_key\.priv"), trio.fail_after(60):
        await Tpm2Host.open(directory)
    with pytest.raises(ConfigError, match=r"tpm2host\.json"), trio.fail_after(60):
        await Tpm2Host.open(tmp_path / "nothing here")
