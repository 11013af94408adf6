"""What measuring a program directory costs, against a single file of the same bytes.

A Linux host measures a program before it starts it: it walks it as the caller, copies
it into a private directory and hashes what it writes (``prepare_program``). This
times that preparation, in this process (as root or not, for this process's uid), for:

* ``file_1m``: one file of 1 MiB (the baseline: what a single binary costs);
* ``tree_100``: a directory of 100 files of 10 KiB (the same bytes, 1 MiB);
* ``tree_1000``: a directory of 1000 files of 1 KiB (the same bytes, 1 MiB);
* ``refuse_100k``: a directory of 100,000 empty files, which the default bounds
  refuse (at 10,000 entries): what a caller can make the host spend with one start.

Each is the median over ``--rounds`` rounds (wall time: copying is I/O), and each
ratio the median of the per-round ratios against ``file_1m`` of the same round.

Prints a table, then as its last line one JSON object with the figures (seconds) and
the ratios ``tree_100_vs_file``, ``tree_1000_vs_file`` and ``refuse_100k_vs_file``.

    python loadtests/program_tree_bench.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio

from taonet import HostError
from taonet.hosts.linux._process import prepare_program

MIB = 1 << 20


def build(base: Path) -> dict[str, Path]:
    """The programs: a file and three directories (see the module docstring)."""
    single = base / "file_1m"
    single.write_bytes(b"#!/bin/sh\n" + os.urandom(MIB - 10))
    single.chmod(0o755)
    programs = {"file_1m": single}
    for name, count in (("tree_100", 100), ("tree_1000", 1000)):
        tree = base / name
        tree.mkdir()
        (tree / "__main__.py").write_text("print('hi')\n")
        for index in range(count):
            (tree / f"m{index}.py").write_bytes(os.urandom(MIB // count))
        programs[name] = tree
    crowd = base / "refuse_100k"
    (crowd / "many").mkdir(parents=True)
    (crowd / "__main__.py").write_text("print('hi')\n")
    fd = os.open(crowd / "many", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(100_000):
            os.close(os.open(str(index), os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    programs["refuse_100k"] = crowd
    return programs


async def prepare_once(program: Path, programs_dir: Path) -> float:
    start = time.perf_counter()
    try:
        prepared = await prepare_program(program, programs_dir, uid=os.geteuid(), gid=os.getegid())
    except HostError:
        elapsed = time.perf_counter() - start
    else:
        elapsed = time.perf_counter() - start
        prepared.cleanup()
    return elapsed


async def main(rounds: int) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="taonet-tree-bench-"))
    try:
        programs = build(base)
        times: dict[str, list[float]] = {name: [] for name in programs}
        ratios: dict[str, list[float]] = {f"{name}_vs_file": [] for name in programs}
        for _ in range(rounds):
            this_round = {
                name: await prepare_once(path, base / "programs") for name, path in programs.items()
            }
            for name, seconds in this_round.items():
                times[name].append(seconds)
                ratios[f"{name}_vs_file"].append(seconds / this_round["file_1m"])
        figures = {name: statistics.median(values) for name, values in times.items()}
        figures.update(
            {
                name: statistics.median(values)
                for name, values in ratios.items()
                if name != "file_1m_vs_file"
            }
        )
        return figures
    finally:
        for parent, dirs, _ in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(parent, name), 0o700)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    figures = trio.run(main, 5 if args.quick else args.rounds)
    for name, value in figures.items():
        unit = "" if name.endswith("_vs_file") else " s"
        print(f"{name:<24} {value:10.4f}{unit}")
    print(json.dumps({name: round(value, 6) for name, value in figures.items()}))
