"""The data of a load-test report's plots, as pure functions of the report.

:func:`latency_series` and :func:`throughput_series` take a report (a JSON-ready dict,
as :func:`~taonet.loadtest.run_load` returns it or as read from a file) and return
what :mod:`taonet.loadtest._plots` draws, so that what is drawn can be checked without
looking at pixels. A report read from a file may be anything: each value used is
checked (a number, finite, not negative, at most :data:`MAX_MS` for a latency and
:data:`MAX_VALUE` for anything else, so that what is drawn stays in matplotlib's
range; the interval at least :data:`~taonet.loadtest._config.MIN_INTERVAL`; the
timeline a list of at most :data:`MAX_POINTS` objects in increasing time, as many as
the longest run has; texts short) and anything else is a
:class:`~taonet.ConfigError` whose message says where, never quoting the report.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Final

import attrs

from taonet import ConfigError
from taonet.loadtest._config import MAX_RUN_SECONDS, MIN_INTERVAL, offered_between

__all__ = [
    "KEPT_UP_SHARE",
    "MAX_MS",
    "MAX_POINTS",
    "MAX_VALUE",
    "PLOTTED",
    "LatencySeries",
    "ThroughputSeries",
    "latency_series",
    "throughput_series",
]

#: The most intervals a plot takes (a report with more is refused, not drawn): as
#: many as the longest run at the shortest interval has, which bounds the drawing's cost.
MAX_POINTS: Final = math.ceil(MAX_RUN_SECONDS / MIN_INTERVAL)
#: The largest latency drawn, in ms (almost three hours: no request of a run waits longer).
MAX_MS: Final = 1e7
#: The largest count, rate or time in seconds drawn (a billion: far above any run's).
MAX_VALUE: Final = 1e9
#: The percentiles drawn: (legend label, timeline key).
PLOTTED: Final = (
    ("p50", "p50_ms"),
    ("p90", "p90_ms"),
    ("p99", "p99_ms"),
    ("p99.9", "p99_9_ms"),
    ("max", "max_ms"),
)
#: An interval is behind when it answered less than this share of what was offered
#: (the share a run must achieve to have sustained its rate).
KEPT_UP_SHARE: Final = 0.95


@attrs.frozen
class LatencySeries:
    """The latency plot's data, from a report's timeline."""

    target: str
    model: str
    #: The end of each interval, in seconds from the start.
    t_s: tuple[float, ...]
    #: (label, one value per interval in ms, None where nothing was measured).
    percentiles: tuple[tuple[str, tuple[float | None, ...]], ...]
    #: The warm-up's end (results before it are excluded).
    warmup_s: float
    #: (interval end, failed requests) of each interval with failures.
    errors: tuple[tuple[float, int], ...]
    #: (seconds, what): when the run was interrupted or a worker was lost.
    marks: tuple[tuple[float, str], ...] = ()


@attrs.frozen
class ThroughputSeries:
    """The throughput plot's data, from a report's configuration, timeline and rate."""

    target: str
    model: str
    #: The end of each interval, in seconds from the start.
    t_s: tuple[float, ...]
    interval_s: float
    #: Requests answered per second (ok or failed, warm-up included) in each interval.
    answered_per_s: tuple[float, ...]
    #: Requests that succeeded per second (warm-up excluded: its results are not kept).
    ok_per_s: tuple[float, ...]
    #: Requests that failed per second (warm-up excluded).
    failed_per_s: tuple[float, ...]
    #: The open model's offered rate over each interval (its schedule, ramp-up
    #: included); None for the closed model.
    offered_per_s: tuple[float, ...] | None
    #: Intervals that answered less than KEPT_UP_SHARE of what they were offered.
    behind: tuple[bool, ...]
    warmup_s: float
    #: The run's overall figures (the report's ``rate``): offered (None for the closed
    #: model) and achieved per second, and its note.
    target_per_s: float | None
    achieved_per_s: float | None
    note: str
    #: (seconds, what): when the run was interrupted or a worker was lost.
    marks: tuple[tuple[float, str], ...] = ()


def _field(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ConfigError(f"not a load-test report: {where} has no {key!r}")
    return mapping[key]


def _number(
    value: Any, where: str, *, optional: bool = False, most: float = MAX_VALUE
) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"not a load-test report: {where} is not a number")
    if value < 0:
        raise ConfigError(f"not a load-test report: {where} is negative")
    if value > most:
        raise ConfigError(f"not a load-test report: {where} is above {most:g}")
    return float(value)


def _required(value: Any, where: str) -> float:
    number = _number(value, where)
    assert number is not None
    return number


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise ConfigError(f"not a load-test report: {where} is not a short text")
    return value


def _timeline(report: Any) -> list[dict[str, Any]]:
    timeline = _field(report, "timeline", "the report")
    if not isinstance(timeline, list):
        raise ConfigError("not a load-test report: its timeline is not a list")
    if len(timeline) > MAX_POINTS:
        raise ConfigError(
            f"the report has {len(timeline)} intervals, more than the {MAX_POINTS} a plot takes"
        )
    for n, entry in enumerate(timeline):
        if not isinstance(entry, dict):
            raise ConfigError(f"not a load-test report: timeline entry {n} is not an object")
    return timeline


def _times(timeline: list[dict[str, Any]]) -> tuple[float, ...]:
    """Each interval's end, in increasing order (or ConfigError)."""
    t_s = tuple(
        _required(_field(e, "t_s", f"timeline entry {n}"), f"timeline entry {n} t_s")
        for n, e in enumerate(timeline)
    )
    if any(later <= earlier for earlier, later in itertools.pairwise(t_s)):
        raise ConfigError("not a load-test report: its timeline is not in increasing time")
    return t_s


def _marks(report: dict[str, Any], warmup: float) -> tuple[tuple[float, str], ...]:
    """When the run was interrupted (Ctrl-C) and when workers were lost."""
    marks = []
    if report.get("interrupted") is True:
        results = _field(report, "results", "the report")
        measured = _required(_field(results, "measured_seconds", "the results"),
                             "the measured seconds")  # fmt: skip
        marks.append((warmup + measured, "interrupted"))
    workers = report.get("workers", [])
    if not isinstance(workers, list) or len(workers) > 64:
        raise ConfigError("not a load-test report: its workers are not a list of at most 64")
    for n, worker in enumerate(workers):
        if isinstance(worker, dict) and worker.get("status") == "died":
            lost = _required(worker.get("lost_at_s"), f"worker {n}'s lost_at_s")
            marks.append((lost, f"worker {n} lost"))
    return tuple(marks)


def latency_series(report: dict[str, Any]) -> LatencySeries:
    """The latency percentiles of each interval of ``report`` (ConfigError if malformed)."""
    config = _field(report, "configuration", "the report")
    warmup = _required(_field(config, "warmup", "the configuration"), "the warm-up")
    timeline = _timeline(report)
    t_s = _times(timeline)
    percentiles = []
    for label, key in PLOTTED:
        values = []
        for n, entry in enumerate(timeline):
            # A report from before p90 and p99.9 were kept per interval: a gap.
            value = _number(entry.get(key), f"timeline entry {n} {key}", optional=True, most=MAX_MS)
            values.append(None if value is None or value <= 0 else value)
        percentiles.append((label, tuple(values)))
    errors = []
    for n, entry in enumerate(timeline):
        failed = _required(
            _field(entry, "errors", f"timeline entry {n}"), f"timeline entry {n} errors"
        )
        if failed:
            errors.append((t_s[n], int(failed)))
    return LatencySeries(
        target=_text(_field(config, "target", "the configuration"), "the target"),
        model=_text(_field(config, "model", "the configuration"), "the model"),
        t_s=t_s,
        percentiles=tuple(percentiles),
        warmup_s=warmup,
        errors=tuple(errors),
        marks=_marks(report, warmup),
    )


def throughput_series(report: dict[str, Any]) -> ThroughputSeries:
    """Answered and offered rates of each interval of ``report`` (ConfigError if malformed)."""
    config = _field(report, "configuration", "the report")
    model = _text(_field(config, "model", "the configuration"), "the model")
    interval = _required(_field(config, "interval", "the configuration"), "the interval")
    warmup = _required(_field(config, "warmup", "the configuration"), "the warm-up")
    duration = _required(_field(config, "duration", "the configuration"), "the duration")
    if interval < MIN_INTERVAL:
        raise ConfigError(f"not a load-test report: its interval is below {MIN_INTERVAL:g} s")
    rate_section = _field(report, "rate", "the report")
    timeline = _timeline(report)
    t_s = _times(timeline)
    answered, ok, failed = [], [], []
    for n, entry in enumerate(timeline):
        where = f"timeline entry {n}"
        ok_count, errors, in_warmup = (
            _required(_field(entry, key, where), f"{where} {key}")
            for key in ("ok", "errors", "warmup")
        )
        answered.append((ok_count + errors + in_warmup) / interval)
        ok.append(ok_count / interval)
        failed.append(errors / interval)
    offered: list[float] | None = None
    target_per_s = None
    if model == "open":
        rate = _required(_field(config, "rate", "the configuration"), "the rate")
        ramp_up = _required(_field(config, "ramp_up", "the configuration"), "the ramp-up")
        # The schedule ends with the run (or where an interrupted run stopped).
        end = warmup + duration
        if report.get("interrupted"):
            results = _field(report, "results", "the report")
            measured = _field(results, "measured_seconds", "the results")
            end = warmup + _required(measured, "the measured seconds")
        offered = [
            offered_between(max(0.0, t - interval), min(t, end), rate, ramp_up) / interval
            if t - interval < end
            else 0.0
            for t in t_s
        ]
        target_per_s = _number(rate_section.get("target_per_s"), "the target rate", optional=True)
    behind = tuple(
        offered is not None and offered[n] > 0 and answered[n] < KEPT_UP_SHARE * offered[n]
        for n in range(len(t_s))
    )
    return ThroughputSeries(
        target=_text(_field(config, "target", "the configuration"), "the target"),
        model=model,
        t_s=t_s,
        interval_s=interval,
        answered_per_s=tuple(answered),
        ok_per_s=tuple(ok),
        failed_per_s=tuple(failed),
        offered_per_s=None if offered is None else tuple(offered),
        behind=behind,
        warmup_s=warmup,
        target_per_s=target_per_s,
        achieved_per_s=_number(
            rate_section.get("achieved_per_s"), "the achieved rate", optional=True
        ),
        note=_text(rate_section.get("note", ""), "the rate's note"),
        marks=_marks(report, warmup),
    )
