"""simpleexample with every program a child process of a Linux host."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import trio

from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_examples.simpleexample.hosted import run_hosted_demo
from tests.examples.conftest import RunTwice, TaonetDemo

NAME = "/simpleexample/secret"


def _hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def test_hosted_demo_runs_twice_with_names_from_host_and_hashes(run_twice: RunTwice) -> None:
    with trio.fail_after(120):
        runs = await run_twice(run_hosted_demo)
    first, second = runs.first, runs.second
    host = next(line for line in first if line.startswith("== Linux host "))
    host_name = re.search(r"key\(\[[0-9a-f]+\]\)", host)
    assert host_name is not None
    for module, label in ((simpleserver, "simpleserver"), (simpleclient, "simpleclient")):
        expected = f"{host_name.group(0)}.Program([{_hash(module.__file__ or '')}])"
        assert f"[{label}] my Tao name is {expected}" in first
        assert f"[{label}] my Tao name is {expected}" in second
    assert any("issued certificate serial" in line for line in first)
    assert not any("issued certificate serial" in line for line in second)
    assert any("[simpleclient] unsealed key and certificate" in line for line in second)
    assert any("[simpleserver] the guard allows it" in line for line in second)
    # The secret server runs hosted (the taonet command, as the domain service does);
    # simpleserver reads its secret there and hears of each run's rotation.
    for lines, read, rotated in ((first, 1, 2), (second, 2, 3)):
        assert any(line.startswith("[secret server] secret server listening on") for line in lines)
        read_line = f"[simpleserver] read its secret {NAME} epoch {read} from the secret server"
        rotate = f"[operator] rotated {NAME} to epoch {rotated}"
        watch = f"[simpleserver] watch: {NAME} rotated (epoch {rotated}); read it again:"
        asked = f"[operator] taonet secret rotate {NAME}"
        watched = next(i for i, line in enumerate(lines) if line.startswith(watch))
        asked_at = next(i for i, line in enumerate(lines) if line.startswith(asked))
        # The watch event and the operator's "rotated" come from two processes once the
        # rotation has committed, in either order; both follow the request.
        assert lines.index(read_line) < asked_at < min(lines.index(rotate), watched)
        assert not any("Traceback" in line for line in lines)
    assert runs.secrets[0].hex() in next(line for line in first if "received the secret" in line)


def test_taonet_demo_hosted_command(taonet_demo: TaonetDemo) -> None:
    taonet_demo("--hosted", timeout=180)
