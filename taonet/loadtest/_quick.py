"""``taonet loadtest --quick``: every target briefly, one report with a section per target.

:func:`quick_configs` makes one short configuration per target in
:data:`~taonet.loadtest._config.TARGETS` (a new target joins by itself), and
:func:`run_quick` runs them one after another with :func:`~taonet.loadtest.run_load`,
draws each target's plots (``DIR/<target>-latency.png``, ``DIR/<target>-throughput.png``)
and rewrites ``DIR/report.json`` after each target, so that a run stopped at any point
leaves what it measured. A target whose requirement is absent (see
:data:`REQUIREMENTS`) is skipped, and the report says why.

The quick report (``schema`` 1), for scripts::

    {
      "schema": 1,                  # raised when a key below changes meaning
      "kind": "quick",              # a single run's report has no "kind"
      "taonet_version": "0.1.0",
      "started_at": "2026-11-28T14:00:00Z",
      "elapsed_s": 31.2,
      "machine": {"cores": 2, "python": "3.11.7", ...},
      "configuration": {            # what every target shares
        "targets": ["echo", "handshake", "secret"],
        "model": "open", "workers": 2, "clients": 16,
        "duration": 2.0, "warmup": 0.5, "interval": 0.25,
        "rates": {"echo": 1000.0, ...}  # each target's offered rate (open model)
      },
      "interrupted": false,         # Ctrl-C: the targets after it did not run
      "ok": true,                   # no target failed (skipped ones do not count)
      "failed": [],                 # the names of the targets that failed
      "targets": {                  # in TARGETS order
        "echo": {
          "status": "ok",           # ok, failed, skipped, interrupted or not_run
          "reason": null,           # why it failed or was skipped (one line)
          "plots": ["echo-latency.png", "echo-throughput.png"],  # in DIR
          "report": {...}           # the target's own report (a single run's), or null
        },
        ...
      }
    }

A target **failed** when it could not start, a worker died, no request succeeded, or
more than 1 % of its requests failed. A rate it could not sustain is not a failure
of the target: its report's ``rate`` says so, with the achieved rate.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import attrs

from taonet import __version__
from taonet._log import get_logger
from taonet.loadtest._config import TARGETS, LoadConfig
from taonet.loadtest._report import compare_reports, machine_facts

__all__ = [
    "QUICK",
    "QUICK_RATES",
    "REQUIREMENTS",
    "SCHEMA",
    "compare_runs",
    "is_quick_report",
    "quick_configs",
    "run_quick",
    "target_reports",
]

log = get_logger(__name__)

#: The version of the quick report's layout (see the module's text).
SCHEMA: Final = 1
#: Each target's timing in a quick run (the options given on the command line win).
QUICK: Final = {"duration": 2.0, "warmup": 0.5, "interval": 0.25}
#: Each target's offered rate in a quick run (open model) unless ``--rate`` is given:
#: modest, so that the quick run shows each target working and its latency, not
#: where it breaks (the full runs and the capacity scripts find that).
QUICK_RATES: Final = {"echo": 1000.0, "handshake": 100.0, "secret": 200.0}
#: The rate of a target not in QUICK_RATES.
DEFAULT_QUICK_RATE: Final = 100.0
#: A target that needs more than the loadtest extra registers a check here: given its
#: configuration, it returns why the target cannot run on this machine (one line,
#: e.g. "PostgreSQL is not installed"), or None. Such a target is skipped, not failed.
REQUIREMENTS: dict[str, Callable[[LoadConfig], str | None]] = {}
#: A target failed when more than this share of its requests failed.
FAILED_SHARE: Final = 0.01
#: The statuses a target may have.
STATUSES: Final = ("ok", "failed", "skipped", "interrupted", "not_run")


def quick_configs(
    base: LoadConfig,
    *,
    targets: Iterable[str] = TARGETS,
    rate: float | None = None,
    duration: float | None = None,
    warmup: float | None = None,
    interval: float | None = None,
) -> list[tuple[str, LoadConfig | str]]:
    """Per target, its quick configuration, or, when it cannot be made, why (one line).

    Each is ``base`` for that target, with QUICK's timing and the target's quick rate
    where ``duration``, ``warmup``, ``interval`` or ``rate`` is not given."""
    from taonet import ConfigError

    out: list[tuple[str, LoadConfig | str]] = []
    for target in targets:
        try:
            config = attrs.evolve(
                base,
                target=target,
                rate=rate if rate is not None else QUICK_RATES.get(target, DEFAULT_QUICK_RATE),
                duration=duration if duration is not None else QUICK["duration"],
                warmup=warmup if warmup is not None else QUICK["warmup"],
                interval=interval if interval is not None else QUICK["interval"],
            )
        except ConfigError as exc:
            out.append((target, str(exc)))
        else:
            out.append((target, config))
    return out


def _status(report: dict[str, Any]) -> tuple[str, str | None]:
    """A run's status and, unless ok, why."""
    if report.get("interrupted"):
        return "interrupted", "stopped by Ctrl-C"
    died = [w for w in report["workers"] if w.get("status") == "died"]
    if died:
        return "failed", str(died[0].get("note"))
    results = report["results"]
    completed = results["ok"] + results["error_count"]
    if not results["ok"]:
        errors = ", ".join(f"{k} {v}" for k, v in results["errors"].items()) or "none answered"
        return "failed", f"no request succeeded ({errors})"
    if results["error_count"] > FAILED_SHARE * completed:
        errors = ", ".join(f"{k} {v}" for k, v in results["errors"].items())
        return "failed", f"{results['error_count']} of {completed} requests failed ({errors})"
    return "ok", None


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def run_quick(
    configs: list[tuple[str, LoadConfig | str]],
    *,
    out: Path | None,
    run: Callable[[LoadConfig], dict[str, Any]] | None = None,
    on_target: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run each configuration with ``run`` (by default :func:`run_load`; the CLI's
    shows its live line), in order; the quick report (see the module's text).

    With ``out``, each target's plots are drawn there and ``out/report.json`` is
    rewritten after each target. Ctrl-C stops the run: the target running is marked
    interrupted (with its partial report), the rest not run, and the report is
    returned (and written) all the same."""
    from taonet.files import atomic_write
    from taonet.loadtest._run import run_load

    runner = run_load if run is None else run
    started = time.monotonic()
    shared = next((c for _, c in configs if isinstance(c, LoadConfig)), None)
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "quick",
        "taonet_version": __version__,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "elapsed_s": 0.0,
        "machine": machine_facts(),
        "configuration": {
            "targets": [target for target, _ in configs],
            **(
                {}
                if shared is None
                else {
                    key: getattr(shared, key)
                    for key in ("model", "workers", "clients", "duration", "warmup", "interval")
                }
            ),
            "rates": {t: c.rate for t, c in configs if isinstance(c, LoadConfig)},
        },
        "interrupted": False,
        "ok": True,
        "failed": [],
        "targets": {
            target: {"status": "not_run", "reason": None, "plots": [], "report": None}
            for target, _ in configs
        },
    }

    def save() -> None:
        failed = [t for t, s in document["targets"].items() if s["status"] == "failed"]
        document["failed"] = failed
        document["ok"] = not failed
        document["elapsed_s"] = round(time.monotonic() - started, 3)
        if out is not None:
            # Valid JSON or nothing: a NaN or infinity is a bug here, never written.
            data = json.dumps(document, indent=2, allow_nan=False).encode() + b"\n"
            atomic_write(out / "report.json", data, mode=0o644)

    section: dict[str, Any] = {}
    try:
        for number, (target, config) in enumerate(configs, 1):
            section = document["targets"][target]
            if on_target is not None:
                on_target(number, len(configs), target)
            if not _run_target(target, config, section, runner, out):
                document["interrupted"] = True
                break
            save()
    except KeyboardInterrupt:  # while a target started, drew its plots, or was saved
        document["interrupted"] = True
        if section.get("status") == "not_run":  # it had not run yet: now it will not
            section.update(status="interrupted", reason="stopped by Ctrl-C")
    save()
    return document


def _run_target(
    target: str,
    config: LoadConfig | str,
    section: dict[str, Any],
    run: Callable[[LoadConfig], dict[str, Any]],
    out: Path | None,
) -> bool:
    """Run one target into its ``section``; False when Ctrl-C stopped it."""
    if isinstance(config, str):
        section.update(status="failed", reason=config)
        return True
    missing = REQUIREMENTS[target](config) if target in REQUIREMENTS else None
    if missing is not None:
        section.update(status="skipped", reason=missing)
        log.info("loadtest_quick_skipped", target=target, reason=missing)
        return True
    log.info("loadtest_quick_target", target=target)
    try:
        report = run(config)
    except KeyboardInterrupt:
        section.update(status="interrupted", reason="stopped by Ctrl-C while starting")
        return False
    except Exception as exc:  # one target's failure is reported; the others run
        log.warning("loadtest_quick_target_failed", target=target, error=_one_line(exc))
        section.update(status="failed", reason=_one_line(exc))
        return True
    status, reason = _status(report)
    section.update(status=status, reason=reason, report=report)
    if out is not None:
        section["plots"] = _plots(report, out, target, section)
    return status != "interrupted"


def _plots(report: dict[str, Any], out: Path, target: str, section: dict[str, Any]) -> list[str]:
    """Draw a target's plots; a failure to draw fails the target, with why."""
    from taonet import ConfigError
    from taonet.loadtest._plots import write_plots

    try:
        return [path.name for path in write_plots(report, out, prefix=f"{target}-")]
    except ConfigError as exc:
        section.update(status="failed", reason=f"plots not drawn: {_one_line(exc)}")
        return []


def is_quick_report(document: dict[str, Any]) -> bool:
    """Whether ``document`` is a quick report (not a single run's)."""
    return document.get("kind") == "quick"


def target_reports(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per target, its single-run report: a quick report's targets that ran, or a
    single run's report under its target's name.

    A quick report's target names become file names (``plot`` draws
    ``<target>-latency.png``): a quick report naming anything but one of
    :data:`~taonet.loadtest._config.TARGETS` is a ConfigError (so it holds at most
    ``len(TARGETS)`` of them)."""
    from taonet import ConfigError

    if not is_quick_report(document):
        configuration = document.get("configuration")
        target = configuration.get("target") if isinstance(configuration, dict) else None
        return {str(target): document}
    targets = document.get("targets")
    if not isinstance(targets, dict):
        return {}
    if any(name not in TARGETS for name in targets):
        raise ConfigError(
            f"not a load-test report: its targets ({_names(targets)}) are not all among "
            + ", ".join(TARGETS)
        )
    return {
        str(name): section["report"]
        for name, section in targets.items()
        if isinstance(section, dict) and isinstance(section.get("report"), dict)
    }


def _names(reports: dict[str, Any], most: int = 8, longest: int = 40) -> str:
    """The targets of a report as one short line (they come from a file)."""
    names = [name if len(name) <= longest else f"{name[:longest]}..." for name in reports]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return (
        ", ".join(repr(n) if not n.isidentifier() else n for n in names[:most]) or "none"
    ) + more


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, Any, Any, str]]:
    """Rows (target, label, A's value, B's value, B/A) for each target both reports
    hold (a quick report holds several, a single run's one). ConfigError if none."""
    from taonet import ConfigError

    in_a, in_b = target_reports(a), target_reports(b)
    common = [target for target in in_a if target in in_b]
    if not common:
        raise ConfigError(
            f"the reports have no target in common (A: {_names(in_a)}; B: {_names(in_b)})"
        )
    return [
        (target, *row) for target in common for row in compare_reports(in_a[target], in_b[target])
    ]
