"""``taonet loadtest --quick``: every target briefly into one report (schema 1) with
each target's plots; a target that cannot run is skipped or failed, and says why;
Ctrl-C still writes the partial report; compare reads quick reports per target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet.loadtest import LoadConfig, run_load
from taonet.loadtest._config import TARGETS
from taonet.loadtest._quick import REQUIREMENTS, SCHEMA, quick_configs, run_quick
from tests.loadtest.cli_run import interrupt, loadtest_process, until_measuring

PNG = b"\x89PNG\r\n\x1a\n"
STATUSES = {"ok", "failed", "skipped", "interrupted", "not_run"}


def _taonet(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", *args],
        capture_output=True, text=True, timeout=240, check=False, **options,
    )  # fmt: skip


def _check_schema(document: dict[str, Any], targets: list[str]) -> None:
    """What a script may rely on in a quick report."""
    assert document["schema"] == SCHEMA == 1
    assert document["kind"] == "quick"
    assert document["taonet_version"]
    assert document["machine"]["cores"] == os.cpu_count()
    assert document["configuration"]["targets"] == targets
    assert list(document["targets"]) == targets
    for section in document["targets"].values():
        assert section["status"] in STATUSES
        assert set(section) == {"status", "reason", "plots", "report"}
    assert document["failed"] == [t for t, s in document["targets"].items()
                                  if s["status"] == "failed"]  # fmt: skip
    assert document["ok"] is (not document["failed"])


async def test_a_target_whose_requirement_is_absent_is_skipped_and_a_broken_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # handshake needs something this machine lacks (as a PostgreSQL target would): it
    # is skipped, not run. secret cannot take 70000-byte values: it fails, saying why,
    # and echo runs all the same.
    monkeypatch.setitem(REQUIREMENTS, "handshake", lambda config: "needs a unicorn")
    base = LoadConfig(workers=1, clients=2, request_size=70000)
    configs = quick_configs(base, targets=("echo", "handshake", "secret"), duration=0.5,
                            warmup=0.25, rate=100)  # fmt: skip
    announced: list[tuple[int, int, str]] = []
    with trio.fail_after(180):
        document = await trio.to_thread.run_sync(
            lambda: run_quick(
                configs, out=tmp_path, run=run_load, on_target=lambda *a: announced.append(a)
            )
        )
    assert announced == [(1, 3, "echo"), (2, 3, "handshake"), (3, 3, "secret")]
    assert json.loads((tmp_path / "report.json").read_text()) == document
    _check_schema(document, ["echo", "handshake", "secret"])
    echo, handshake, secret = document["targets"].values()
    assert echo["status"] == "ok", echo["reason"]
    assert echo["report"]["results"]["ok"] > 0
    assert echo["report"]["configuration"]["duration"] == 0.5
    assert echo["plots"] == ["echo-latency.png", "echo-throughput.png"]
    for name in echo["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert handshake == {"status": "skipped", "reason": "needs a unicorn", "plots": [],
                         "report": None}  # fmt: skip
    assert secret["status"] == "failed"
    assert "65536" in secret["reason"]
    assert secret["report"] is None
    assert document["failed"] == ["secret"]
    assert document["ok"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # noqa: ASYNC240
        "echo-latency.png", "echo-throughput.png", "report.json"
    ]  # fmt: skip


def test_ctrl_c_between_targets_marks_the_next_interrupted_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # echo is skipped (nothing runs); the Ctrl-C comes as handshake is announced.
    monkeypatch.setitem(REQUIREMENTS, "echo", lambda config: "not here")

    def announce(number: int, total: int, target: str) -> None:
        if number == 2:
            raise KeyboardInterrupt

    configs = quick_configs(LoadConfig(workers=1), targets=("echo", "handshake", "secret"))
    document = run_quick(configs, out=tmp_path, on_target=announce)
    assert json.loads((tmp_path / "report.json").read_text()) == document
    _check_schema(document, ["echo", "handshake", "secret"])
    assert document["interrupted"] is True
    assert [s["status"] for s in document["targets"].values()] == [
        "skipped", "interrupted", "not_run"
    ]  # fmt: skip


def test_quick_takes_every_target_and_the_given_options() -> None:
    base = LoadConfig(workers=1, clients=3)
    configs = quick_configs(base, interval=0.5)
    assert [t for t, _ in configs] == list(TARGETS)
    for target, config in configs:
        assert isinstance(config, LoadConfig)
        assert config.target == target
        assert (config.duration, config.warmup, config.interval) == (2.0, 0.5, 0.5)
        assert config.clients == 3


@pytest.mark.slow
def test_cli_quick_runs_every_target_into_one_report_with_plots(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    done = _taonet("--quick", "--out", str(out), "--workers", "1", "--duration", "0.5",
                   "--warmup", "0.25", env={**os.environ, "COLUMNS": "120"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "report.json").read_text())
    _check_schema(document, list(TARGETS))
    for target, section in document["targets"].items():
        assert section["status"] == "ok", (target, section["reason"])
        assert section["report"]["configuration"]["target"] == target
        assert section["report"]["results"]["ok"] > 0
        assert section["plots"] == [f"{target}-latency.png", f"{target}-throughput.png"]
        for name in section["plots"]:
            assert (out / name).read_bytes()[:8] == PNG
        # A table per target, and a progress line per target on standard error.
        assert f"taonet loadtest: {target}," in done.stdout
        assert f"{target}: ok" in done.stdout
    assert [line for line in done.stderr.splitlines() if "--quick:" in line] == [
        f"taonet loadtest --quick: {n}/{len(TARGETS)} {t}" for n, t in enumerate(TARGETS, 1)
    ]
    # compare: two quick reports target by target; a quick report and a single run's
    # report on the target they share.
    compared = _taonet("compare", str(out / "report.json"), str(out / "report.json"), "-o", "json")
    assert compared.returncode == 0, compared.stderr
    rows = json.loads(compared.stdout)
    assert sorted({row["target"] for row in rows}) == sorted(TARGETS)
    for row in rows:
        if row["figure"] == "throughput /s":
            assert row["b_over_a"] == "1.00x"
    single = tmp_path / "echo.json"
    single.write_text(json.dumps(document["targets"]["echo"]["report"]))
    compared = _taonet("compare", str(single), str(out / "report.json"), "-o", "json")
    assert compared.returncode == 0, compared.stderr
    assert {row["target"] for row in json.loads(compared.stdout)} == {"echo"}
    text = _taonet("compare", str(out / "report.json"), str(out / "report.json"),
                   env={**os.environ, "COLUMNS": "120"})  # fmt: skip
    assert text.returncode == 0
    assert "secret: p99 ms" in text.stdout
    # plot: a saved quick report's plots, each target's.
    again = tmp_path / "again"
    plotted = _taonet("plot", str(out / "report.json"), "--out", str(again))
    assert plotted.returncode == 0, plotted.stderr
    assert sorted(p.name for p in again.iterdir()) == sorted(
        name for section in document["targets"].values() for name in section["plots"]
    )


def test_compare_refuses_reports_with_no_target_in_common(tmp_path: Path) -> None:
    for name, target in (("a", "echo"), ("b", "secret")):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"configuration": {"target": target}, "results": {}})
        )
    done = _taonet("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "no target in common (A: echo; B: secret)" in done.stderr
    # A report made to flood the terminal: its names are cut short in the error line.
    (tmp_path / "b.json").write_text(json.dumps({
        "kind": "quick",
        "targets": {f"{n}{'x' * 10_000}": {"report": {"results": {}}} for n in range(100)},
    }))  # fmt: skip
    done = _taonet("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert len(done.stderr) < 600
    assert "and 92 more" in done.stderr


@pytest.mark.slow
def test_cli_quick_exits_nonzero_when_a_target_failed_with_the_report_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "quick"
    done = _taonet("--quick", "--out", str(out), "--workers", "1", "--duration", "0.5",
                   "--warmup", "0.25", "--request-size", "70000",
                   env={**os.environ, "TAONET_LOADTEST_QUICK_TARGETS": "echo,secret"})  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("taonet: error: 1 target(s) failed: secret (first: ")
    assert last.endswith(f"report written to {out / 'report.json'}")
    document = json.loads((out / "report.json").read_text())
    _check_schema(document, ["echo", "secret"])
    assert document["targets"]["echo"]["status"] == "ok"
    assert document["targets"]["secret"]["status"] == "failed"


@pytest.mark.slow
def test_ctrl_c_during_quick_still_writes_the_partial_report(tmp_path: Path) -> None:
    # The first target measures for 30 s; SIGINT to the process group, as a terminal's
    # Ctrl-C would, once its log says it is measuring.
    out = tmp_path / "quick"
    with loadtest_process(
        "--quick", "--out", str(out), "--workers", "1", "--duration", "30", "--warmup", "0"
    ) as process:
        seen = until_measuring(process)
        assert "taonet loadtest --quick: 1/" in "".join(seen)
        _, stderr = interrupt(process)
    assert process.returncode == 130, stderr
    assert "partial report is in" in stderr
    document = json.loads((out / "report.json").read_text())
    _check_schema(document, list(TARGETS))
    assert document["interrupted"] is True
    first, *rest = document["targets"].values()
    assert first["status"] == "interrupted"
    assert first["report"]["interrupted"] is True
    assert first["report"]["results"]["ok"] > 0
    assert first["report"]["results"]["measured_seconds"] < 30
    assert [section["status"] for section in rest] == ["not_run"] * len(rest)


@pytest.mark.parametrize(
    ("selection", "said"),
    [
        ("nonexistent", "TAONET_LOADTEST_QUICK_TARGETS names 'nonexistent', no target"),
        ("echo,ecko", "TAONET_LOADTEST_QUICK_TARGETS names 'ecko', no target"),
        (",", "TAONET_LOADTEST_QUICK_TARGETS is set but names no target"),
        ("", "TAONET_LOADTEST_QUICK_TARGETS is set but names no target"),
    ],
)
def test_a_quick_selection_naming_no_target_is_refused_in_one_line(
    tmp_path: Path, selection: str, said: str
) -> None:
    # A7 finding 11: a typo used to run nothing and report ok (exit 0).
    out = tmp_path / "quick"
    done = _taonet("--quick", "--out", str(out),
                   env={**os.environ, "TAONET_LOADTEST_QUICK_TARGETS": selection})  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert said in done.stderr
    assert not out.exists()


def test_quick_over_every_target_with_a_state_directory_says_what_is_wrong() -> None:
    done = _taonet("--quick", "--state-dir", "/tmp/x")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--state-dir needs --target secret or --target domain" in done.stderr
    assert "keeps no state" not in done.stderr


def test_quick_checks_every_targets_plot_names_before_any_run(tmp_path: Path) -> None:
    # A7 finding 8: the second target's plot name is a directory: refused up front.
    out = tmp_path / "quick"
    (out / "secret-throughput.png").mkdir(parents=True)
    done = _taonet("--quick", "--out", str(out),
                   env={**os.environ, "TAONET_LOADTEST_QUICK_TARGETS": "echo,secret"})  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert f"cannot write {out / 'secret-throughput.png'}: it is a directory" in done.stderr
    assert "1/2" not in done.stderr  # no target ran
    assert sorted(p.name for p in out.iterdir()) == ["secret-throughput.png"]


@pytest.mark.slow
def test_a_quick_report_that_cannot_be_saved_after_all_still_shows_the_results(
    tmp_path: Path,
) -> None:
    # A7 finding 8: out/report.json becomes a directory while the first target measures;
    # Ctrl-C ends it, the report cannot be saved: its table comes before the error.
    out = tmp_path / "quick"
    with loadtest_process(
        "--quick", "--out", str(out), "--workers", "1", "--duration", "60", "--warmup", "0",
        env={"TAONET_LOADTEST_QUICK_TARGETS": "echo,handshake"},
    ) as process:  # fmt: skip
        until_measuring(process)
        (out / "report.json").mkdir()
        stdout, stderr = interrupt(process)
    assert process.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"taonet: error: cannot write {out / 'report.json'}: Is a directory")
    assert last.endswith("the results so far are above, the report is not saved")
    assert "p99.9 ms" in stdout
    assert "echo, open model" in stdout
