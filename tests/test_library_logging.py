"""taonet never prints on its own: its events reach only what the application set up."""

from __future__ import annotations

import subprocess
import sys

# A program that logs through taonet's module loggers at every level, bound and not,
# with whatever logging set-up {setup} makes.
_PROGRAM = """
import sys
import trio
from taonet._log import get_logger
{setup}
log = get_logger("taonet.channel._server")

async def main():
    import taonet.channel  # importing the library prints nothing either
    # Direct events at every level, bound and not.
    log.debug("probe_debug", n=1)
    log.info("probe_info", n=2)
    log.bind(peer="p").warning("probe_warning", n=3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("probe_exception")

trio.run(main)
"""


def _run(setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unconfigured_application_sees_nothing() -> None:
    result = _run("")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_the_check_sees_plain_structlog_printing() -> None:
    # What taonet's modules did before: structlog unconfigured prints debug to stdout.
    code = "import structlog; structlog.get_logger('taonet.x').debug('probe_debug')"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "probe_debug" in result.stdout


def test_standard_logging_gets_the_events_at_its_levels() -> None:
    result = _run("import logging; logging.basicConfig(level=logging.INFO)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "probe_debug" not in result.stderr
    assert "probe_info n=2" in result.stderr
    assert "probe_warning peer='p' n=3" in result.stderr
    assert "probe_exception" in result.stderr
    assert "ValueError: boom" in result.stderr


def test_configure_logging_routes_through_structlog() -> None:
    result = _run("import taonet; taonet.configure_logging(json=True, level='debug')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert any('"probe_debug"' in line and '"n": 1' in line for line in lines)
    assert any('"probe_warning"' in line and '"peer": "p"' in line for line in lines)
    assert any('"probe_exception"' in line and "ValueError: boom" in line for line in lines)


def test_configuring_after_the_first_event_still_takes_effect() -> None:
    code = (
        "import taonet\n"
        "from taonet._log import get_logger\n"
        "log = get_logger('taonet.x')\n"
        "log.info('before')\n"
        "taonet.configure_logging(json=True, level='info')\n"
        "log.info('after')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "before" not in result.stderr + result.stdout
    assert '"after"' in result.stderr


def test_no_taonet_module_asks_structlog_for_a_logger_directly() -> None:
    # The CLI is an application: it configures logging before it logs.
    from pathlib import Path

    import taonet

    root = Path(taonet.__file__).parent
    direct = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name not in {"_log.py", "_logging.py"}
        and path.parent.name != "cli"
        and "structlog.get_logger" in path.read_text(encoding="utf-8")
    ]
    assert direct == []


# A connection's task binds its context; the lines it logs carry it, other tasks' do not.
_BOUND = """
import trio
from taonet._log import bind_context, get_logger
{setup}
log = get_logger("taonet.channel._server")

async def connection(n):
    bind_context(conn_id=f"c{{n}}", peer=f"p{{n}}")
    log.warning("in_connection", n=n)

async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection, 1)
        nursery.start_soon(connection, 2)
    log.warning("outside")

trio.run(main)
"""


def test_bound_context_goes_with_the_standard_logging_lines() -> None:
    code = _BOUND.format(setup="import logging; logging.basicConfig(level=logging.INFO)")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for n in (1, 2):
        (line,) = [line for line in lines if f"n={n}" in line]
        assert f"conn_id='c{n}'" in line
        assert f"peer='p{n}'" in line
    (outside,) = [line for line in lines if "outside" in line]
    assert "conn_id" not in outside


def test_bound_context_goes_with_configured_structlog_lines() -> None:
    code = _BOUND.format(setup="import taonet; taonet.configure_logging(json=True)")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    import json

    events = [json.loads(line) for line in result.stderr.splitlines()]
    inside = {e["n"]: e for e in events if e["event"] == "in_connection"}
    assert {n: (e["conn_id"], e["peer"]) for n, e in inside.items()} == {
        1: ("c1", "p1"),
        2: ("c2", "p2"),
    }
    (outside,) = [e for e in events if e["event"] == "outside"]
    assert "conn_id" not in outside
