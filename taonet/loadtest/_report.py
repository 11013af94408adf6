"""Merging the workers' intervals into one result, the JSON report, and comparing two.

The report is a JSON-ready dict (``report.json``); its keys:

* ``taonet_version``, ``started_at`` (ISO 8601 UTC), ``configuration``, ``machine``
  (cores, python, platform);
* ``results``: requests ``ok``, ``errors`` by kind, ``throughput_per_s`` (ok per
  measured second), ``latency_ms`` (p50, p90, p99, p99_9, max, mean) and the merged
  HDR ``histogram`` (its base64 encoding, microseconds), warm-up excluded; and per
  ``operations`` (echo, handshake, or the secret target's read, write, list, rotate)
  their ``ok``, ``errors`` and ``latency_ms``; ``first_error_at_s``, when the first
  interval with a failure began (a server that died mid-run: when);
* ``rate``: for the open model the target and the ``achieved_per_s`` rate (requests
  answered, ok or not, per measured second), ``missed`` sends (due but never
  started), and ``sustained`` (at least 95 % of the target achieved, at most 1 % of
  the sends missed and 1 % of the requests failed) with a one-line ``note``;
* ``timeline``: one entry per interval (``t_s``, its end; ``ok``, ``errors``,
  ``warmup`` requests; ``per_s``; ``p50_ms``, ``p90_ms``, ``p99_ms``, ``p99_9_ms``,
  ``max_ms``, None when nothing was measured in it);
* ``workers``: each worker's pid and how it ended (``done``, ``interrupted``,
  ``died`` with its exit code and when); ``interrupted``: the run was stopped early;
* ``server`` (when the server was scraped: the secret and domain targets, or
  ``server_metrics``): the server's own figures per scrape and over the measured
  window and the whole run, added by the run from :meth:`Scraper.section
  <taonet.loadtest._scrape.Scraper.section>` (latency percentiles there are bucket
  estimates).

The secret target on PostgreSQL adds (``_replicas``) ``replicas``: each replica's
pid, port, status and the requests it ``served`` in the measured window by its own
metrics (``served_per_s``), and ``postgres`` (the run's schema, kept or not); with
several replica counts, ``scale``: one row per phase (:func:`scale_row`).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from collections import Counter
from typing import Any, Final

from taonet import __version__
from taonet.loadtest._config import LoadConfig, offered_between
from taonet.loadtest._worker import new_histogram

__all__ = [
    "PERCENTILES",
    "Merger",
    "compare_reports",
    "decode_histogram",
    "machine_facts",
    "scale_row",
]

#: The percentiles every report gives: (report key, percentile).
PERCENTILES: Final = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))
#: An open-model run sustained its rate if it achieved this share of it, missing
#: at most 1 % of its sends, with at most 1 % of its requests failed.
SUSTAINED_SHARE: Final = 0.95


def machine_facts() -> dict[str, Any]:
    """Where the run was made: cores, Python, platform."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def decode_histogram(encoded: str | bytes) -> Any:
    """An HDR histogram from its base64 encoding (as in a report)."""
    from taonet.loadtest._extras import histogram_class

    data = encoded.encode("ascii") if isinstance(encoded, str) else encoded
    return histogram_class().decode(data)


def _latencies(histogram: Any) -> dict[str, float | None]:
    if not histogram.get_total_count():
        return {key: None for key, _ in (*PERCENTILES, ("max", 0), ("mean", 0))}
    out: dict[str, float | None] = {
        key: histogram.get_value_at_percentile(p) / 1000 for key, p in PERCENTILES
    }
    out["max"] = histogram.get_max_value() / 1000
    out["mean"] = round(histogram.get_mean_value() / 1000, 3)
    return out


class _Interval:
    def __init__(self) -> None:
        self.histogram = new_histogram()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.warmup = 0


class Merger:
    """The workers' intervals merged into one result."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.intervals: dict[int, _Interval] = {}
        self.total = _Interval()
        self.workers: dict[int, dict[str, Any]] = {}
        #: Per operation: its latency histogram, ok and failed counts (warm-up excluded).
        self.operations: dict[str, list[Any]] = {}

    def add_interval(
        self,
        worker: int,
        index: int,
        encoded: bytes | None,
        ok: int,
        errors: dict[str, int],
        warmup: int,
        operations: dict[str, tuple[bytes | None, int, int]],
    ) -> None:
        for op, (op_encoded, op_ok, op_failed) in operations.items():
            stats = self.operations.setdefault(op, [new_histogram(), 0, 0])
            if op_encoded is not None:
                stats[0].add(decode_histogram(op_encoded))
            stats[1] += op_ok
            stats[2] += op_failed
        interval = self.intervals.setdefault(index, _Interval())
        for into in (interval, self.total):
            if encoded is not None:
                into.histogram.add(decode_histogram(encoded))
            into.ok += ok
            into.errors.update(errors)
            into.warmup += warmup

    def worker_done(self, worker: int, pid: int | None, summary: dict[str, Any]) -> None:
        status = "interrupted" if summary.get("interrupted") else "done"
        self.workers[worker] = {"index": worker, "pid": pid, "status": status, **summary}

    def worker_lost(
        self, worker: int, pid: int | None, exit_code: int | None, elapsed: float, why: str
    ) -> None:
        self.workers[worker] = {
            "index": worker,
            "pid": pid,
            "status": "died",
            "exit_code": exit_code,
            "lost_at_s": round(elapsed, 3),
            "note": f"worker {worker} {why} after {elapsed:.1f} s (exit code {exit_code});"
            " the results hold what it reported before",
        }

    def lost_count(self) -> int:
        return sum(1 for w in self.workers.values() if w["status"] == "died")

    def running_figures(self, index: int) -> tuple[int, int, float, float | None]:
        """ok and errors so far, the rate (warm-up included) and p99 (ms) of interval
        ``index``."""
        interval = self.intervals.get(index, _Interval())
        done = interval.ok + sum(interval.errors.values()) + interval.warmup
        p99 = None
        if interval.histogram.get_total_count():
            p99 = interval.histogram.get_value_at_percentile(99.0) / 1000
        return (
            self.total.ok,
            sum(self.total.errors.values()),
            done / self.config.interval,
            p99,
        )

    def report(self, *, interrupted: bool, elapsed: float) -> dict[str, Any]:
        """The report (see the module's text)."""
        config = self.config
        measured = config.duration
        if interrupted or self.lost_count():
            measured = min(config.duration, max(elapsed - config.warmup, 0.0))
        total = self.total
        completed = total.ok + sum(total.errors.values())
        results = {
            "ok": total.ok,
            "errors": dict(sorted(total.errors.items())),
            "error_count": sum(total.errors.values()),
            "warmup_requests": total.warmup,
            "first_error_at_s": self._first_error_at(),
            "measured_seconds": round(measured, 3),
            "throughput_per_s": round(total.ok / measured, 1) if measured else 0.0,
            "latency_ms": _latencies(total.histogram),
            "histogram": total.histogram.encode().decode("ascii"),
            "operations": {
                op: {"ok": ok, "errors": failed, "latency_ms": _latencies(histogram)}
                for op, (histogram, ok, failed) in sorted(self.operations.items())
            },
        }
        workers = [self.workers.get(i, {"index": i, "status": "unknown"}) for i in
                   range(config.workers)]  # fmt: skip
        return {
            "taonet_version": __version__,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "configuration": config.as_dict(),
            "machine": machine_facts(),
            "interrupted": interrupted,
            "results": results,
            "rate": self._rate(completed, measured, workers, interrupted, results["error_count"]),
            "timeline": self._timeline(),
            "workers": workers,
        }

    def _rate(
        self,
        completed: int,
        measured: float,
        workers: list[dict[str, Any]],
        interrupted: bool,
        errors: int,
    ) -> dict[str, Any]:
        config = self.config
        achieved = round(completed / measured, 1) if measured else 0.0
        if config.model == "closed":
            return {
                "model": "closed",
                "concurrency": config.clients,
                "achieved_per_s": achieved,
                "note": f"closed model: {config.clients} clients, {achieved:g} requests/s",
            }
        offered = offered_between(config.warmup, config.warmup + measured, config.rate,
                                  config.ramp_up)  # fmt: skip
        target = offered / measured if measured else config.rate
        missed = sum(int(w.get("missed", 0)) for w in workers)
        sustained = bool(
            measured
            and achieved >= SUSTAINED_SHARE * target
            and missed <= 0.01 * offered
            and errors <= 0.01 * completed
        )
        if interrupted or self.lost_count():
            note = (f"run cut short: {achieved:g} requests/s achieved over {measured:.1f} s"
                    f" of {target:g}/s offered")  # fmt: skip
            sustained = sustained and not self.lost_count()
        elif sustained:
            note = f"target rate sustained: {achieved:g} of {target:g} requests/s"
        elif errors > 0.01 * completed:
            note = (
                f"target rate NOT sustained: {errors} of {completed} requests failed"
                f" ({achieved:g} requests/s answered of {target:g}/s offered, {missed} sends"
                " missed)"
            )
        else:
            note = (
                f"target rate NOT sustained: {achieved:g} requests/s achieved of {target:g}/s"
                f" offered, {missed} sends missed (the server or the generator could not keep"
                " up; latencies count from the intended send times)"
            )
        return {
            "model": "open",
            "target_per_s": round(target, 1),
            "achieved_per_s": achieved,
            "missed": missed,
            "sustained": sustained,
            "note": note,
        }

    def _first_error_at(self) -> float | None:
        """When the first interval with a failed request began (seconds from the start)."""
        for index in sorted(self.intervals):
            if self.intervals[index].errors:
                return round(index * self.config.interval, 3)
        return None

    def _timeline(self) -> list[dict[str, Any]]:
        out = []
        for index in sorted(self.intervals):
            interval = self.intervals[index]
            done = interval.ok + sum(interval.errors.values())
            latency = _latencies(interval.histogram)
            out.append({
                "t_s": round((index + 1) * self.config.interval, 3),
                "ok": interval.ok,
                "errors": sum(interval.errors.values()),
                "warmup": interval.warmup,
                "per_s": round(done / self.config.interval, 1),
                "p50_ms": latency["p50"],
                "p90_ms": latency["p90"],
                "p99_ms": latency["p99"],
                "p99_9_ms": latency["p99_9"],
                "max_ms": latency["max"],
            })  # fmt: skip
        return out


def scale_row(replicas: int, report: dict[str, Any]) -> dict[str, Any]:
    """One phase of a scale run: its replica count, the rate offered (open model; the
    concurrency in the closed model) and achieved, throughput, p50/p99/p99.9 (ms),
    errors, whether the rate was sustained, and each replica's served rate."""
    results, rate = report["results"], report["rate"]
    latency = results["latency_ms"]
    return {
        "replicas": replicas,
        "offered_per_s": rate.get("target_per_s"),
        "concurrency": rate.get("concurrency"),
        "achieved_per_s": rate["achieved_per_s"],
        "throughput_per_s": results["throughput_per_s"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "p99_9_ms": latency["p99_9"],
        "errors": results["error_count"],
        "sustained": rate.get("sustained"),
        "served_per_s": [r.get("served_per_s") for r in report.get("replicas", [])],
        "interrupted": report["interrupted"],
    }


#: The rows of a comparison: (label, path in the report).
COMPARED: Final = (
    ("target", ("configuration", "target")),
    ("model", ("configuration", "model")),
    ("workers", ("configuration", "workers")),
    ("clients", ("configuration", "clients")),
    ("replicas", ("configuration", "replicas")),
    ("target rate /s", ("rate", "target_per_s")),
    ("achieved /s", ("rate", "achieved_per_s")),
    ("sustained", ("rate", "sustained")),
    ("throughput /s", ("results", "throughput_per_s")),
    ("ok", ("results", "ok")),
    ("errors", ("results", "error_count")),
    ("p50 ms", ("results", "latency_ms", "p50")),
    ("p90 ms", ("results", "latency_ms", "p90")),
    ("p99 ms", ("results", "latency_ms", "p99")),
    ("p99.9 ms", ("results", "latency_ms", "p99_9")),
    ("max ms", ("results", "latency_ms", "max")),
    ("server ok /s", ("server", "measured", "ok_per_s")),
    ("server p50 ms (est.)", ("server", "measured", "latency_ms_est", "p50")),
    ("server p99 ms (est.)", ("server", "measured", "latency_ms_est", "p99")),
    ("audit write p99 ms (est.)", ("server", "measured", "audit_write_ms_est", "p99")),
    ("taonet", ("taonet_version",)),
    ("cores", ("machine", "cores")),
)


def _get(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _figure(value: Any) -> float | int | None:
    """A report's figure as a finite number, else None (a report may be hand-made)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and abs(value) > 1 << 63:
        return None
    return value


def _shown(value: Any, figure: float | int | None) -> Any:
    """What ``compare`` shows of a value: a finite number, true or false, text of at
    most 80 characters, or the kind of anything else (a hand-made report may hold
    anything; None: absent or not a finite number)."""
    if figure is not None or isinstance(value, bool):
        return value
    if value is None or isinstance(value, int | float):
        return None
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return value if len(value) <= 80 else value[:77] + "..."


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """Rows (label, A's value, B's value, B/A as text where both are numbers)."""
    rows = []
    for label, path in COMPARED:
        va, vb = _get(a, path), _get(b, path)
        ratio = ""
        fa, fb = _figure(va), _figure(vb)
        if fa and fb is not None:
            try:
                ratio = f"{fb / fa:.2f}x"
            except OverflowError:  # a hand-made report's huge numbers
                ratio = ""
        rows.append((label, _shown(va, fa), _shown(vb, fb), ratio))
    return rows
