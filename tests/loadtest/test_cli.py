"""``taonet loadtest`` as a user runs it (a subprocess each): the quick echo run
and its report, compare, Ctrl-C, a killed worker, non-loopback refused, the extras."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loadtest.cli_run import interrupt, loadtest_process, until_measuring


def test_the_cli_refuses_a_non_loopback_target_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--connect", "192.168.0.10:80", "--plain"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "not a loopback address" in done.stderr


@pytest.mark.slow
def test_cli_quick_echo_run_writes_a_report_that_compare_reads(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--quick", "--target", "echo",
         "--workers", "2", "--rate", "300", "--duration", "1", "--warmup", "0.5",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["taonet_version"]
    assert report["machine"]["cores"] == os.cpu_count()
    assert report["configuration"]["target"] == "echo"
    assert report["configuration"]["workers"] == 2
    assert report["results"]["ok"] > 0
    assert report["results"]["errors"] == {}
    assert set(report["results"]["latency_ms"]) >= {"p50", "p90", "p99", "p99_9", "max"}
    assert [w["status"] for w in report["workers"]] == ["done", "done"]
    assert "p99.9 ms" in done.stdout
    # --out draws the report's plots beside it.
    for name in ("latency.png", "throughput.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # compare: a second report (the first, twice as fast) side by side.
    faster = json.loads(json.dumps(report))
    faster["results"]["throughput_per_s"] = report["results"]["throughput_per_s"] * 2
    (tmp_path / "b.json").write_text(json.dumps(faster))
    compared = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "compare", str(out / "report.json"),
         str(tmp_path / "b.json"), "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    rows = {row["figure"]: row for row in json.loads(compared.stdout)}
    assert rows["throughput /s"]["b_over_a"] == "2.00x"
    assert rows["p99 ms"]["a"] == report["results"]["latency_ms"]["p99"]
    text = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "compare", str(out / "report.json"),
         str(tmp_path / "b.json")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert text.returncode == 0
    assert "2.00x" in text.stdout


def test_compare_refuses_what_is_not_a_report(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"not": "a report"}')
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "compare", str(bogus), str(bogus)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not a load-test report" in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_still_writes_the_partial_report(tmp_path: Path) -> None:
    # A long run (60 s measured); SIGINT to its process group as a terminal's Ctrl-C
    # would, once a first report line shows it is measuring.
    out = tmp_path / "run"
    with loadtest_process(
        "--workers", "2", "--rate", "200", "--duration", "60", "--warmup", "0",
        "--interval", "0.25", "--out", str(out), "-o", "json",
    ) as process:  # fmt: skip
        until_measuring(process)
        stdout, stderr = interrupt(process)
    assert process.returncode == 130, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert report["results"]["ok"] > 0
    assert report["results"]["measured_seconds"] < 30
    assert {w["status"] for w in report["workers"]} == {"interrupted"}
    assert "partial report" in stderr
    assert json.loads(stdout)["interrupted"] is True


@pytest.mark.slow
def test_cli_reports_a_killed_worker_and_still_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "taonet", "loadtest", "--workers", "2", "--rate", "200",
         "--duration", "3", "--warmup", "0", "--interval", "0.25", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TAONET_LOG": "info", "TAONET_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:  # bounded: the run itself ends within about 20 s
            if "loadtest_measuring" in line:
                pids = json.loads(line)["workers"]
                break
        else:
            raise AssertionError(f"the run never measured: {process.communicate(timeout=60)}")
        os.kill(pids[1], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 1, stderr
    assert "taonet: error: worker 1 died after" in stderr
    assert f"report written to {out / 'report.json'}" in stderr
    report = json.loads((out / "report.json").read_text())
    assert [w["status"] for w in report["workers"]] == ["done", "died"]
    assert report["workers"][1]["pid"] == pids[1]
    assert report["results"]["ok"] > 0
    assert "worker 1 died" in stdout


def test_importing_the_package_imports_neither_extra() -> None:
    # structlog imports rich by itself when it is installed: only what we add counts.
    code = (
        "import sys, structlog; before = set(sys.modules); "
        "import taonet.loadtest, taonet.cli._main; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('hdrh', 'rich')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["hdrh", "rich"])
def test_a_missing_extra_is_one_line_saying_what_to_install(missing: str) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None; "
        "from taonet.cli._main import main; sys.exit(main(['loadtest', '--quick']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "pip install 'taonet[loadtest]'" in done.stderr


def test_compare_survives_hostile_reports(tmp_path: Path) -> None:
    """A hand-made report with a number too large for a float, NaN, or nesting too
    deep for the parser: one line or a table, never an internal error; -o json stays
    valid JSON."""
    good = {"results": {"ok": 1, "throughput_per_s": 10.0}, "rate": {"achieved_per_s": 5}}
    huge = {
        "results": {"ok": 1, "throughput_per_s": 10**400},
        "rate": {"achieved_per_s": "x" * 10**5},
    }
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "huge.json").write_text(json.dumps(huge))
    (tmp_path / "nan.json").write_text('{"results": {"ok": NaN}}')
    (tmp_path / "deep.json").write_text('{"results": ' + "[" * 200_000 + "]" * 200_000 + "}")

    def compare(a: str, b: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taonet", "loadtest", "compare", *extra,
             str(tmp_path / a), str(tmp_path / b)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = compare("good.json", "huge.json", "-o", "json")
    assert done.returncode == 0, done.stderr
    rows = {row["figure"]: row for row in json.loads(done.stdout)}
    assert rows["throughput /s"]["b"] is None  # not a finite number: not shown
    assert len(rows["achieved /s"]["b"]) <= 80
    assert compare("good.json", "huge.json").returncode == 0
    for bad, reason in (("nan.json", "NaN"), ("deep.json", "nested too deeply")):
        done = compare("good.json", bad)
        assert done.returncode == 1, done.stderr
        assert "not a load-test report" in done.stderr
        assert reason in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["report.json", "latency.png", "throughput.png"])
def test_an_out_directory_that_cannot_take_the_report_is_refused_before_the_run(
    tmp_path: Path, name: str
) -> None:
    # A7 finding 8: a directory where a file is written used to cost the whole run.
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "--workers", "1", "--duration", "60",
         "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert f"cannot write {out / name}: it is a directory, not a file" in done.stderr
    assert done.stdout == ""  # no run, no table
    assert sorted(p.name for p in out.iterdir()) == [name]  # the probe file is gone


@pytest.mark.slow
@pytest.mark.parametrize("json_output", [False, True])
def test_a_write_that_fails_after_the_run_still_shows_its_results(
    tmp_path: Path, json_output: bool
) -> None:
    # A7 finding 8: --out passed the check, then (mid-run) report.json, or a plot's
    # name, became a directory. The results are printed before the one-line error.
    out = tmp_path / "run"
    blocked = out / ("latency.png" if json_output else "report.json")
    with loadtest_process(
        "--workers", "1", "--rate", "200", "--duration", "60", "--warmup", "0",
        "--interval", "0.25", "--out", str(out), *(["-o", "json"] if json_output else []),
    ) as process:  # fmt: skip
        until_measuring(process)
        blocked.mkdir()
        stdout, stderr = interrupt(process)
    assert process.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"taonet: error: cannot write {blocked}: Is a directory; ")
    if json_output:
        report = json.loads(stdout)
        assert report["results"]["ok"] > 0
        assert last.endswith(f"the results are above, the report is in {out / 'report.json'}")
        assert json.loads((out / "report.json").read_text()) == report
    else:
        assert "p99.9 ms" in stdout
        assert last.endswith("the results are above, the report is not saved")


def test_compare_shows_a_reports_strings_as_they_are_never_as_markup(tmp_path: Path) -> None:
    """Review A7 finding 6: a report's strings (and its file's name, a column header)
    are text: "[/]" was an internal error (MarkupError), a [link=...] an OSC-8
    hyperlink on the terminal, [bold] in a file name a style."""
    link = "[link=https://evil.example/]echo[/link]"
    # (compare needs a target in common: a single run's report is under its target)
    for name, target in (("[bold]a.json", link), ("b.json", link), ("c.json", "[/]")):
        (tmp_path / name).write_text(json.dumps({
            "configuration": {"target": target, "model": "[blink]open"},
            "results": {"ok": 1, "throughput_per_s": 10.0, "errors": {"[/]": 1}},
            "rate": {"achieved_per_s": 5, "note": "[/link]"},
        }))  # fmt: skip
    # As on a terminal (colours, hyperlinks), and to a pipe.
    terminal = {**os.environ, "TTY_COMPATIBLE": "1", "FORCE_COLOR": "1", "COLUMNS": "250"}
    for env in (terminal, {**os.environ, "COLUMNS": "250"}):
        for a, b, shown in (
            ("[bold]a.json", "b.json", (link, "A: [bold]a.json", "[blink]open")),
            ("b.json", "[bold]a.json", (link, "B: [bold]a.json")),
            ("c.json", "c.json", ("[/]",)),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "taonet", "loadtest", "compare", a, b],
                capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path, env=env,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stderr == ""
            assert "\x1b]8;" not in done.stdout  # no hyperlink
            assert "\x1b[5m" not in done.stdout  # no blink
            for text in shown:
                assert text in done.stdout


@pytest.mark.slow
def test_a_hostile_metrics_endpoint_still_gives_a_valid_json_report(tmp_path: Path) -> None:
    """Review A7 finding 3 as the review ran it: ``--server-metrics`` on an endpoint
    whose counters jump to 1e308 (and past a float), with bucket bounds of +-1e308 and
    a counter gone negative. The report is valid JSON (no Infinity, no NaN) that
    compare and plot read, and the table shows no inf or nan."""
    import socketserver
    import threading

    from .test_scrape import _HOSTILE

    served = iter(range(10**9))

    class Hostile(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            body = _HOSTILE[next(served) % len(_HOSTILE)].encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hostile) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        out = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, "-m", "taonet", "loadtest", "--target", "echo", "--workers", "1",
             "--rate", "50", "--duration", "2", "--warmup", "0.5", "--interval", "0.25",
             "--server-metrics", f"127.0.0.1:{port}", "--out", str(out)],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        server.shutdown()
    assert done.returncode == 0, done.stderr

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the report")

    report = json.loads((out / "report.json").read_text(), parse_constant=refuse)
    assert report["server"]["failed_scrapes"].get("out_of_range", 0) >= 1
    assert report["server"]["scrapes"] >= 2
    row = next(line for line in done.stdout.splitlines() if "server (est.)" in line)
    assert "inf" not in row.lower()
    assert "nan" not in row.lower()
    saved = str(out / "report.json")
    for command in (
        ["compare", saved, saved],
        ["plot", saved, "--out", str(tmp_path / "plots")],
    ):
        again = subprocess.run(
            [sys.executable, "-m", "taonet", "loadtest", *command],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
