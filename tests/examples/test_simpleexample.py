"""simpleexample end to end: initialization, then operation from sealed state."""

from __future__ import annotations

import trio

from taonet_examples.simpleexample.demo import run_demo
from tests.examples.conftest import RunTwice, TaonetDemo


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


def test_taonet_demo_command(taonet_demo: TaonetDemo) -> None:
    taonet_demo(timeout=120)
