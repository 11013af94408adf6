"""The plots of a load-test report: drawn from a real short run, they show exactly the
report's data (the series are pure functions of the report, and the figures draw
those series); ``taonet loadtest plot`` on a saved report, and on what is not one."""

from __future__ import annotations

import copy
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from taonet import ConfigError
from taonet.cli._main import main
from taonet.loadtest import figures, latency_series, throughput_series, write_plots
from taonet.loadtest._plotdata import MAX_POINTS

from .servers import ControlledEcho, run_against

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def _real_run() -> dict[str, Any]:
    # 1 worker, 4 clients at 200/s offered; every answer takes 40 ms, so the server
    # answers at most about 100/s (it falls behind), and at its 150th request it stops
    # listening and drops everyone: the rest fail.
    server = ControlledEcho(delay=0.04, die_at=150)
    with trio.fail_after(120):
        return await run_against(
            server, workers=1, rate=200, clients=4, duration=2.0, warmup=0.5, interval=0.25
        )


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return trio.run(_real_run)


def _values(data: Any) -> list[Any]:
    """What matplotlib holds for a line or a scatter, as Python lists."""
    listed: list[Any] = np.asarray(data, dtype=float).tolist()
    return listed


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_latency_series_is_the_reports_timeline(report: dict[str, Any]) -> None:
    timeline = report["timeline"]
    series = latency_series(report)
    assert series.t_s == tuple(e["t_s"] for e in timeline)
    keys = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "p99.9": "p99_9_ms",
            "max": "max_ms"}  # fmt: skip
    assert [label for label, _ in series.percentiles] == list(keys)
    for label, values in series.percentiles:
        assert values == tuple(e[keys[label]] for e in timeline)
    assert any(v is not None for _, values in series.percentiles for v in values)
    assert series.warmup_s == 0.5
    # The server died: its failures are marked where they happened, all of them.
    assert series.errors == tuple((e["t_s"], e["errors"]) for e in timeline if e["errors"])
    assert sum(n for _, n in series.errors) == report["results"]["error_count"] > 0


def test_the_throughput_series_shows_where_the_server_fell_behind(report: dict[str, Any]) -> None:
    timeline = report["timeline"]
    series = throughput_series(report)
    assert series.t_s == tuple(e["t_s"] for e in timeline)
    assert series.answered_per_s == tuple(
        (e["ok"] + e["errors"] + e["warmup"]) / 0.25 for e in timeline
    )
    assert series.ok_per_s == tuple(e["ok"] / 0.25 for e in timeline)
    assert series.offered_per_s is not None
    for t, offered in zip(series.t_s, series.offered_per_s, strict=True):
        # 200/s offered over every interval inside the run, nothing after its end.
        assert math.isclose(offered, 200.0 if t <= 2.5 else 0.0, abs_tol=1e-6)
    assert series.behind == tuple(
        o > 0 and a < 0.95 * o
        for o, a in zip(series.offered_per_s, series.answered_per_s, strict=True)
    )
    assert any(series.behind)  # 40 ms per answer on 4 clients: about 100/s of 200/s
    assert series.target_per_s == report["rate"]["target_per_s"]
    assert series.achieved_per_s == report["rate"]["achieved_per_s"]
    assert series.note == report["rate"]["note"]


def test_the_figures_draw_exactly_the_series(report: dict[str, Any]) -> None:
    latency_figure, throughput_figure = figures(report)
    series = latency_series(report)
    ax = latency_figure.axes[0]
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    for label, values in series.percentiles:
        assert _values(lines[label].get_xdata()) == list(series.t_s)
        drawn = _values(lines[label].get_ydata())
        assert [None if math.isnan(v) else v for v in drawn] == list(values)
    legend_box = ax.get_legend()
    assert legend_box is not None
    legend = [text.get_text() for text in legend_box.get_texts()]
    failed = report["results"]["error_count"]
    assert "warm-up (excluded)" in legend
    assert f"failed requests ({failed})" in legend
    # Throughput: the right panel's points are the intervals against their offered rate,
    # the ones behind in red, and the line y = x.
    throughput = throughput_series(report)
    assert throughput.offered_per_s is not None
    against = throughput_figure.axes[1]
    drawn_points = sorted(
        (x, y)
        for collection in against.collections
        if collection.get_label() in ("interval", "interval behind (< 95 %)")
        for x, y in _values(collection.get_offsets())
    )
    assert drawn_points == sorted(
        (o, a)
        for o, a in zip(throughput.offered_per_s, throughput.answered_per_s, strict=True)
        if o > 0
    )
    behind = [c for c in against.collections if str(c.get_label()).startswith("interval behind")]
    assert len(behind) == 1
    assert len(_values(behind[0].get_offsets())) == sum(throughput.behind)
    # The server died: the intervals with failures are crossed.
    assert throughput.failed_per_s == tuple(e["errors"] / 0.25 for e in report["timeline"])
    crossed = [c for c in against.collections if c.get_label() == "interval with failed requests"]
    assert len(crossed) == 1
    assert len(_values(crossed[0].get_offsets())) == sum(
        1
        for o, f in zip(throughput.offered_per_s, throughput.failed_per_s, strict=True)
        if o > 0 and f > 0
    )
    assert "y = x (kept up)" in [line.get_label() for line in against.get_lines()]


def test_plots_are_valid_pngs_of_sane_size_and_the_same_for_the_same_report(
    report: dict[str, Any], tmp_path: Path
) -> None:
    paths = write_plots(report, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "throughput.png"]
    first = [p.read_bytes() for p in paths]
    for data in first:
        assert _png_size(data) == (1100, 550)
        assert 10_000 < len(data) < 1_000_000
    write_plots(report, tmp_path)
    assert [p.read_bytes() for p in paths] == first
    assert [p.stat().st_mode & 0o777 for p in paths] == [0o644, 0o644]


def test_a_closed_model_report_has_no_offered_rate(report: dict[str, Any]) -> None:
    closed = copy.deepcopy(report)
    closed["configuration"]["model"] = "closed"
    closed["rate"] = {"model": "closed", "achieved_per_s": 10.0, "note": "closed model"}
    series = throughput_series(closed)
    assert series.offered_per_s is None
    assert not any(series.behind)
    _, figure = figures(closed)
    assert len(figure.axes) == 1


def test_an_interrupted_run_and_a_lost_worker_are_marked(report: dict[str, Any]) -> None:
    assert latency_series(report).marks == throughput_series(report).marks == ()
    stopped = copy.deepcopy(report)
    stopped["interrupted"] = True
    stopped["results"]["measured_seconds"] = 1.25
    stopped["workers"][0].update(status="died", lost_at_s=1.5)
    expected = ((1.75, "interrupted"), (1.5, "worker 0 lost"))
    assert latency_series(stopped).marks == throughput_series(stopped).marks == expected
    # The offered rate stops where the interrupted run stopped.
    series = throughput_series(stopped)
    assert series.offered_per_s is not None
    assert all(o == 0.0 for t, o in zip(series.t_s, series.offered_per_s, strict=True) if t > 1.75)
    latency_figure, throughput_figure = figures(stopped)
    for ax in (latency_figure.axes[0], throughput_figure.axes[0]):
        labels = [line.get_label() for line in ax.get_lines()]
        assert "interrupted (1.75 s)" in labels
        assert "worker 0 lost (1.5 s)" in labels


def _broken(report: dict[str, Any], how: str) -> Any:
    bad = copy.deepcopy(report)
    if how == "no timeline":
        del bad["timeline"]
    elif how == "timeline not a list":
        bad["timeline"] = {"0": {}}
    elif how == "entry not an object":
        bad["timeline"][1] = "late"
    elif how == "time going back":
        bad["timeline"][2]["t_s"] = 0.1
    elif how == "percentile as text":
        bad["timeline"][3]["p99_ms"] = "fast"
    elif how == "count not finite":
        bad["timeline"][3]["ok"] = math.inf
    elif how == "negative errors":
        bad["timeline"][3]["errors"] = -5
    elif how == "no configuration":
        del bad["configuration"]
    elif how == "huge target name":
        bad["configuration"]["target"] = "x" * 10_000
    elif how == "too many intervals":
        bad["timeline"] = [{"t_s": n + 1, "ok": 0, "errors": 0, "warmup": 0}
                           for n in range(MAX_POINTS + 1)]  # fmt: skip
    return bad


BROKEN = (
    "no timeline", "timeline not a list", "entry not an object", "time going back",
    "percentile as text", "count not finite", "negative errors", "no configuration",
    "huge target name", "too many intervals",
)  # fmt: skip


@pytest.mark.parametrize("how", BROKEN)
def test_a_malformed_report_is_refused_before_anything_is_drawn(
    report: dict[str, Any], how: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"not a load-test report|more than the"):
        write_plots(_broken(report, how), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_plot_command_draws_a_saved_report(
    report: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    assert main(["loadtest", "plot", str(saved), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out.split()
    assert out == [
        str(tmp_path / "plots" / "latency.png"),
        str(tmp_path / "plots" / "throughput.png"),
    ]
    for name in out:
        assert _png_size(Path(name).read_bytes()) == (1100, 550)


@pytest.mark.parametrize("how", ["not json", "a list", "percentile as text", "too large"])
def test_plot_command_refuses_what_is_not_a_report_in_one_line(
    report: dict[str, Any], how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "report.json"
    if how == "not json":
        saved.write_bytes(b"\x00\xff{{{ not json")
    elif how == "a list":
        saved.write_text("[1, 2, 3]")
    elif how == "too large":
        with saved.open("wb") as f:  # a sparse file past the 64 MiB bound: never read
            f.truncate((64 << 20) + 1)
    else:
        saved.write_text(json.dumps(_broken(report, how)))
    assert main(["loadtest", "plot", str(saved), "--out", str(tmp_path / "plots")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("taonet: error: ")
    assert not (tmp_path / "plots").exists() or list((tmp_path / "plots").iterdir()) == []


@pytest.mark.parametrize(
    "command", [["plot", "r.json", "--out", "d"], ["--target", "echo", "--out", "d"]]
)
def test_without_matplotlib_plots_are_one_line_saying_what_to_install(
    command: list[str], tmp_path: Path
) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from taonet.cli._main import main; "
        f"sys.exit(main(['loadtest', *{command!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "pip install 'taonet[plots]'" in done.stderr
    assert not (tmp_path / "d").exists()  # refused before any load, nothing written


# --- Review A7 findings 2 and 7: a hand-made report must not write outside --out,
# crash matplotlib, or cost without bound ----------------------------------------------


def _quick_report(report: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A quick report holding ``report`` (a real run's) under each of ``names``."""
    return {
        "schema": 1,
        "kind": "quick",
        "targets": {
            name: {"status": "ok", "reason": None, "plots": [], "report": report} for name in names
        },
    }


def _plot_cli(document: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    saved = tmp_path / "hostile.json"
    saved.write_text(json.dumps(document))
    return subprocess.run(
        [sys.executable, "-m", "taonet", "loadtest", "plot", str(saved),
         "--out", str(tmp_path / "out" / "plots")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "name", ["../escaped", "../../escaped", "ABSOLUTE/owned", "a\x00b", "x/y", ".hidden", "\\x"]
)
def test_a_quick_reports_target_name_cannot_put_a_plot_outside_out(
    report: dict[str, Any], name: str, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "owned-latency.png").write_bytes(b"the victim's own file")
    name = name.replace("ABSOLUTE", str(victim))
    done = _plot_cli(_quick_report(report, ["echo", name]), tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("taonet: error: ")
    assert "not a load-test report" in done.stderr
    # Nothing written anywhere: not above --out, not at the absolute path, not in --out.
    assert _files(tmp_path) == {"hostile.json", "victim/owned-latency.png"}
    assert (victim / "owned-latency.png").read_bytes() == b"the victim's own file"


@pytest.mark.parametrize("prefix", ["../", "../x-", "/tmp/x-", "a/b-", "a\x00b-", ".", "..", "\\"])
def test_write_plots_writes_only_plain_names_directly_in_its_directory(
    report: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match="plain name"):
        write_plots(report, out, prefix=prefix)
    assert _files(tmp_path) == set()


def test_a_quick_report_plots_at_most_one_pair_per_known_target(
    report: dict[str, Any], tmp_path: Path
) -> None:
    # The review's hostile_many.json: 40 targets, 80 PNGs. Only TARGETS' names are
    # taken, so a quick report draws at most len(TARGETS) pairs.
    names = [f"t{n}" for n in range(40)]
    done = _plot_cli(_quick_report(report, names), tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "and 32 more" in done.stderr
    assert _files(tmp_path) == {"hostile.json"}
    from taonet.loadtest._config import TARGETS

    done = _plot_cli(_quick_report(report, list(TARGETS)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2 * len(TARGETS)


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_ms", 1e300), ("p50_ms", 1e8), ("ok", 1e300), ("t_s", 1e300), ("errors", 1e12)],
)
def test_huge_finite_values_are_refused_in_one_line_not_a_crash(
    report: dict[str, Any], key: str, value: float, tmp_path: Path
) -> None:
    # The review's hostile_1e300.json: max_ms 1e300 was OverflowError in matplotlib.
    bad = copy.deepcopy(report)
    bad["timeline"][-1][key] = value
    done = _plot_cli(bad, tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1
    assert "not a load-test report" in done.stderr
    assert not (tmp_path / "out" / "plots").exists() or _files(tmp_path / "out" / "plots") == set()


@pytest.mark.parametrize(
    ("where", "value"), [("interval", 1e-300), ("rate", 1e300), ("warmup", 1e300)]
)
def test_a_configuration_that_would_overflow_the_plot_is_refused(
    report: dict[str, Any], where: str, value: float, tmp_path: Path
) -> None:
    bad = copy.deepcopy(report)
    bad["configuration"][where] = value
    with pytest.raises(ConfigError, match="not a load-test report"):
        write_plots(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_plots_cost_is_bounded_by_the_longest_run() -> None:
    from taonet.loadtest._config import MAX_RUN_SECONDS, MIN_INTERVAL

    assert MAX_POINTS == math.ceil(MAX_RUN_SECONDS / MIN_INTERVAL) <= 36_000


def test_what_matplotlib_cannot_draw_is_a_config_error(
    report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taonet.loadtest._plots as plots

    class Unlayable:
        def savefig(self, *args: Any, **kwargs: Any) -> None:
            raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(plots, "figures", lambda _report: (Unlayable(), Unlayable()))
    with pytest.raises(ConfigError, match="cannot draw the report's plots"):
        write_plots(report, tmp_path)
    assert list(tmp_path.iterdir()) == []
