"""``taonet list|stop|kill`` on a real host: a header, short ids, file names, start times,
and selectors that never pick the wrong program (two programs with one file name)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest

from tests.cli.test_host_cmd import detached, host_env, ok, taonet

__all__ = ["host_env"]  # the fixture, used here


@pytest.fixture
def twins(host_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The host of ``host_env`` running two different programs both named ``sleeper``."""
    env = host_env
    other = tmp_path / "other"
    other.mkdir()
    (other / "sleeper").write_text(
        "#!/bin/sh\n# another program, the same file name\nexec sleep 601\n"
    )
    (other / "sleeper").chmod(0o755)
    pw = tmp_path / "pw"
    ok(taonet("domain", "policy", "--add-program", str(other / "sleeper"), "--password-file",
              str(pw), env=env))  # fmt: skip
    ok(detached("run", str(Path(env["BIN"]) / "sleeper"), env=env))
    ok(detached("run", str(other / "sleeper"), env=env))
    env["OTHER"] = str(other / "sleeper")
    return env


def programs(env: dict[str, str]) -> list[dict[str, object]]:
    listed = json.loads(ok(taonet("list", "-o", "json", env=env)))
    assert isinstance(listed["programs"], list)
    return listed["programs"]


def test_list_has_a_header_ids_files_and_start_times(twins: dict[str, str]) -> None:
    env = twins
    header, *rows = ok(taonet("list", env=env)).splitlines()
    assert re.fullmatch(r"ID\s+PID\s+USER\s+STARTED\s+FILE", header)
    assert len(rows) == 2
    found = programs(env)
    for row, program in zip(rows, found, strict=True):
        short, pid, user, day, clock, file = row.split()
        assert (short, int(pid), user, file) == (
            program["short_id"],
            program["pid"],
            program["user"],
            "sleeper",
        )
        assert f"{day}T{clock}" == str(program["started"])[:19]
    for program in found:
        assert re.fullmatch(r"[0-9a-f]{32}", str(program["id"]))
        assert str(program["id"]).startswith(str(program["short_id"]))
        assert len(str(program["short_id"])) == 12
        assert str(program["principal"]).startswith("key([")
        assert ".Program([" in str(program["principal"])
        assert re.fullmatch(r"[0-9a-f]{64}", str(program["program_sha256"]))
        started = datetime.datetime.fromisoformat(str(program["started"]).replace("Z", "+00:00"))
        age = datetime.datetime.now(datetime.UTC) - started
        assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)
        assert isinstance(program["started_ns"], int)
    assert {p["path"] for p in found} == {str(Path(env["BIN"]) / "sleeper"), env["OTHER"]}
    assert found[0]["id"] != found[1]["id"]
    assert found[0]["principal"] != found[1]["principal"]


def test_a_file_name_two_programs_share_is_refused_with_the_candidates(
    twins: dict[str, str],
) -> None:
    env = twins
    before = programs(env)
    for verb in ("stop", "kill"):
        result = taonet(verb, "sleeper", env=env)
        assert result.returncode == 2, result.stderr  # usage: say which one
        assert result.stderr.count("\n") == 1
        assert "'sleeper' names 2 programs" in result.stderr
        for program in before:
            assert f"id {program['short_id']} pid {program['pid']}" in result.stderr
    # Nothing was signalled.
    assert [p["id"] for p in programs(env)] == [p["id"] for p in before]


def test_stop_by_short_id_and_kill_by_pid_pick_exactly_one(twins: dict[str, str]) -> None:
    env = twins
    first, second = programs(env)
    ids = [str(first["id"]), str(second["id"])]
    # The shortest prefix (4 digits at least) that only the first id has.
    n = next(n for n in range(4, 33) if ids[0][:n] != ids[1][:n])
    stopped = ok(taonet("stop", ids[0][:n], env=env))
    assert stopped == f"stopped {first['short_id']} sleeper (pid {first['pid']})\n"
    killed = json.loads(ok(taonet("kill", f"pid:{second['pid']}", "-o", "json", env=env)))
    assert [p["id"] for p in killed["killed"]] == [second["id"]]
    assert killed["killed"][0]["principal"] == second["principal"]


def test_stop_by_a_unique_file_name_or_by_path(twins: dict[str, str], tmp_path: Path) -> None:
    env = twins
    napper = tmp_path / "other" / "napper"
    napper.write_text("#!/bin/sh\nexec sleep 602\n")
    napper.chmod(0o755)
    ok(taonet("domain", "policy", "--add-program", str(napper), "--password-file",
              str(tmp_path / "pw"), env=env))  # fmt: skip
    ok(detached("run", str(napper), env=env))
    by_name = {p["path"]: p for p in programs(env)}
    stopped = ok(taonet("stop", "napper", env=env))
    assert f"napper (pid {by_name[str(napper)]['pid']})" in stopped
    # The whole path tells the two sleepers apart.
    other = by_name[env["OTHER"]]
    assert f"(pid {other['pid']})" in ok(taonet("kill", env["OTHER"], env=env))


def test_a_selector_that_names_nothing_is_not_found(twins: dict[str, str]) -> None:
    env = twins
    for selector in ("server.py", "f" * 32, "pid:1", "id:" + "0" * 32, "file:sleeper.sh"):
        result = taonet("stop", selector, env=env)
        assert result.returncode == 3, (selector, result.stderr)
        assert "no hosted program" in result.stderr
