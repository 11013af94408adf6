"""Cost of starting a hosted program, before and after the non-dumpable launch (A1 F1).

Runs N starts (prepare, spawn, wait) of a Python script run by the host's interpreter
and of a binary, as this user, and prints one JSON object: milliseconds per start and
the first start (which, since A1 F1, copies the interpreter once). Run it with the
code to compare on ``sys.path``: ``python tests/hosts/measure_launch.py [N]``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from taonet.hosts.linux._interpreters import Interpreter, check_interpreter
from taonet.hosts.linux._process import prepare_program, spawn_program

PYTHON = "/usr/bin/python3"


async def one(source: Path, programs: Path, interpreters: dict[str, Interpreter]) -> float:
    began = time.perf_counter()
    prepared = await prepare_program(
        source,
        programs,
        uid=os.geteuid(),
        gid=os.getegid(),
        interpreters=interpreters,
    )
    process = await spawn_program(
        prepared, args=[], env={}, cwd=None, uid=os.geteuid(), gid=os.getegid(), channel=None
    )
    await process.wait()
    prepared.cleanup()
    return time.perf_counter() - began


async def main(count: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="taonet-measure-launch-"))
    try:
        script = base / "script"
        script.write_text("#!/usr/bin/env python3\n")
        binary = base / "binary"
        shutil.copyfile("/bin/true", binary)
        for path in (script, binary):
            path.chmod(0o755)
        interpreters = {"python3": check_interpreter("python3", PYTHON, owner=os.geteuid())}
        figures: dict[str, float] = {}
        for name, source in (("script", script), ("binary", binary)):
            programs = base / f"programs-{name}"
            first = await one(source, programs, interpreters)
            times = [await one(source, programs, interpreters) for _ in range(count)]
            figures[f"{name}_first_ms"] = round(first * 1000, 2)
            figures[f"{name}_ms"] = round(sum(times) / len(times) * 1000, 2)
        print(json.dumps(figures))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 30)
