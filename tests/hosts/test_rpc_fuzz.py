"""The Tao RPC server of a real Linux host under random and mutated requests from
real hosted programs, with a well-behaved sibling program working throughout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet.hosts.linux import AdminClient, LinuxHost
from tests.hosts.fuzz_program import ENDINGS
from tests.hosts.linux_helpers import (
    child_name,
    init_root,
    open_root,
    parse_lines,
    read_all,
    run_probe,
    write_fuzzer,
    write_probe,
)

#: Requests in all (the fuzzers share them).
TOTAL_REQUESTS = 100_000


async def _run(host: LinuxHost, program: Path, args: list[str]) -> tuple[int | None, list[Any]]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    async with AdminClient.connect(host.socket_path) as admin:
        try:
            info = await admin.start(str(program), args, cwd=str(program.parent), stdout=write_fd)
        finally:
            os.close(write_fd)
        output = await read_all(read_fd)
        done = await admin.wait(str(info.pid))
    return done.exit_status, parse_lines(output)


@pytest.mark.slow
async def test_random_and_mutated_requests_from_real_programs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fuzzer = write_fuzzer(tmp_path)
    probe = write_probe(tmp_path)
    init_root(tmp_path / "host")
    blob = tmp_path / "blob"
    # A short request timeout, so that the "stall" ending is dropped soon.
    with trio.fail_after(300):
        host = await open_root(nursery, tmp_path / "host", request_timeout=3.0)
        results: list[tuple[int | None, list[Any]]] = []
        sibling: list[tuple[int | None, list[Any]]] = []

        async def fuzz(seed: int, count: int, ending: str) -> None:
            results.append(await _run(host, fuzzer, [str(seed), str(count), ending]))

        async def well_behaved() -> None:
            # Seals before the fuzzers start, unseals while they run.
            sibling.append(await run_probe(host, probe, ["name", "seal", str(blob)]))
            for _ in range(5):
                sibling.append(await run_probe(host, probe, ["unseal", str(blob), "attest"]))

        per_fuzzer = TOTAL_REQUESTS // len(ENDINGS) + 1
        async with trio.open_nursery() as fuzzers:
            fuzzers.start_soon(well_behaved)
            for seed, ending in enumerate(ENDINGS):
                fuzzers.start_soon(fuzz, seed, per_fuzzer, ending)

        # The host is still up and serving.
        status, lines = await run_probe(host, probe, ["name", "unseal", str(blob)])
        assert status == 0
        assert lines == [
            {"name": str(child_name(host, probe))},
            {"data": "probe secret", "policy": "self"},
        ]
        assert host.list_programs() == []
    await host.stop()

    answered = 0
    for status, lines in results:
        assert status == 0, lines
        (summary,) = lines
        # Every request answered, in order, naming its method and sequence number
        # (the fuzzer checks that), none with an internal error (a handler bug).
        assert summary["internal"] == [], summary
        assert summary["ok"] + summary["error"] == summary["sent"] == per_fuzzer, summary
        # Then the broken framing closed that program's channel; a body over its
        # limit, whose header was read, was answered first under its call's op and seq.
        assert summary["closed"] is True, summary
        assert summary["failure_answered"] is (summary["ending"] == "big-body"), summary
        answered += summary["sent"]
        # The mix reached past the decoder: some of everything was accepted.
        assert summary["ok"] > per_fuzzer // 10, summary
        for kind in ("valid", "method", "wrong", "flip", "truncate"):
            assert summary[f"kind:{kind}"] > 0, summary
    assert sorted(summary["ending"] for _, (summary,) in results) == sorted(ENDINGS)
    assert answered >= TOTAL_REQUESTS
    assert len(sibling) == 6
    for status, lines in sibling:
        assert status == 0, lines
    assert sibling[0][1][1] == {"sealed": str(blob)}
    for _, lines in sibling[1:]:
        assert lines[0] == {"data": "probe secret", "policy": "self"}
        assert "attestation" in lines[1]
