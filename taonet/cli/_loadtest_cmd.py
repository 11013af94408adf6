"""``taonet loadtest``: load a server and report latency and throughput; ``compare``, ``plot``.

``taonet loadtest [options]`` runs one load test (see :mod:`taonet.loadtest`): a live
progress line on standard error while it runs, then a table, and with ``--out DIR``
the report in ``DIR/report.json`` and its plots, ``DIR/latency.png`` and
``DIR/throughput.png`` (the ``plots`` extra, matplotlib): ``DIR`` is checked before
the run (a file can be made in it; none of those names is a directory or other
non-file), and should a write fail after the run all the same, the table (or the
report) is printed before the one-line error (exit 1). ``-o json`` prints the
report instead of the table. Ctrl-C stops the workers; the partial report is still
written (exit 130). A worker that died is named on one line after the report is
written (exit 1); so is a secret-server replica that died, and a ``--postgres`` run
whose schema was not dropped (its world process died: the schema is named, with the
``DROP SCHEMA`` to run).

``taonet loadtest --quick`` without ``--target`` runs every target briefly, one
after another (:func:`taonet.loadtest.run_quick`: 2 s measured after 0.5 s of
warm-up each, the other options applying to every target), prints a table per
target, and with ``--out DIR`` writes one report with a section per target (its
layout, ``schema`` 1, is in the text of ``taonet/loadtest/_quick.py``) and each
target's plots (``DIR/echo-latency.png``...). A target that failed makes the exit
status 1, once the report is written; Ctrl-C writes the partial report (exit 130).
``--quick --target T`` is one short run of T (3 s measured after 1 s of warm-up).
For tests only, ``TAONET_LOADTEST_QUICK_TARGETS`` (a comma-separated subset of the
targets) narrows what ``--quick`` runs (a name that is no target, or none, is refused).
``--quick`` without ``--target`` takes no ``--state-dir``.

``taonet loadtest compare A.json B.json`` shows two reports side by side (each
target both hold, when either is a quick report). ``taonet loadtest plot
REPORT.json --out DIR`` draws a saved report's plots.

Targets: ``echo``, a TLS echo server the tool starts on 127.0.0.1 (the generator's
own ceiling), or with ``--connect`` a plain echo server already running on a loopback
address; ``handshake``, bare Tao channel handshakes against a channel server whose
identity (and the client's) comes from a local domain the tool makes in a temporary
directory; ``secret``, a secret server (with its domain service, on SQLite) the tool
runs the same way, loaded with a weighted mix of read, write, list and rotate;
``domain``, a domain service the tool runs the same way, each request one program
certificate issued for a fresh key's attestation (``--state-dir`` keeps the secret
and domain targets' domain, audit log and database: a new directory, made 0700, or an
empty one of the user's that others cannot write to, locked for the run so that a
second run given it is refused). The secret and domain targets'
servers are scraped (``/metrics``) each interval: the report's ``server`` section
and the table's ``server`` row hold their own figures (percentiles estimated from
histogram buckets); ``--server-metrics`` scrapes the endpoint of a server the tool
did not start. Loading servers that run elsewhere on this machine (``--domain``,
``--secret-server``, ``--identity``) is not there yet.

``--postgres URL`` puts the secret target on a PostgreSQL reached through a loopback
address or a Unix socket only (tables in a fresh schema, dropped after unless
``--keep-schema``); ``--replicas N`` runs N secret-server processes on it, client i
on replica i mod N, and ``--replicas 1,2`` one phase per count with the same load:
the table then gives a row per replica count, and each replica's own count of the
requests it answered.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from taonet import ConfigError, configure_logging
from taonet.cli._failures import NotFoundError, UsageError
from taonet.cli._output import add_output_option, wants_json

#: What ``--quick --target T`` sets when the option is not given: a run of a few
#: seconds (``--quick`` without ``--target`` takes taonet.loadtest._quick's QUICK).
QUICK = {"duration": 3.0, "warmup": 1.0, "interval": 0.5, "rate": 1000.0}
DEFAULTS = {"duration": 10.0, "warmup": 1.0, "interval": 1.0, "rate": 1000.0}
#: The width of tables written to a file or a pipe.
_PIPE_WIDTH = 120
#: For tests only: a comma-separated subset of the targets that ``--quick`` runs.
QUICK_TARGETS_VARIABLE = "TAONET_LOADTEST_QUICK_TARGETS"
#: The largest report ``compare`` and ``plot`` read.
MAX_REPORT_BYTES = 64 << 20


def register(sub: Any) -> None:
    p = sub.add_parser(
        "loadtest",
        help="load a server (open or closed model) and report latency percentiles",
        description=(
            "Load a server from several worker processes and report latency percentiles "
            "(HDR histograms), throughput and errors by kind. Open model (--rate): "
            "latency counts from each send's intended time, so a stalled server shows as "
            "latency; a rate that cannot be sustained is reported with the achieved rate. "
            "Closed model (--model closed): --clients loops that send when answered. "
            "Only loopback addresses are loaded."
        ),
    )
    p.add_argument(
        "--target",
        choices=["echo", "handshake", "secret", "domain"],
        default=None,
        help="what to load: echo, a TLS echo server the tool starts on 127.0.0.1 (the"
        " generator's own ceiling); handshake, bare Tao channel handshakes; secret, a secret"
        " server (--mix of read, write, list, rotate); domain, a domain service (a program"
        " certificate per request, for a fresh key attested by a soft host). handshake,"
        " secret and domain run against servers with identities from a local domain the"
        " tool makes in a temporary directory (default echo; with --quick, every target)",
    )
    p.add_argument(
        "--mix",
        metavar="OP=W,...",
        default="read=90,write=5,list=4,rotate=1",
        help="secret target: operations and their weights (default read=90,write=5,list=4,"
        "rotate=1)",
    )
    p.add_argument(
        "--objects",
        type=int,
        default=100,
        help="secret target: names created before the run and worked on in turn (default 100)",
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="secret target: its store on this PostgreSQL (a postgresql:// URL to 127.0.0.1,"
        " ::1 or a Unix socket directory; the tables go into a fresh schema"
        " taonet_loadtest_*, dropped after the run: use a database of its own; the URL"
        " shows in ps: give the password in PGPASSWORD or a PGPASSFILE, not in the URL)",
    )
    p.add_argument(
        "--replicas",
        metavar="N[,N...]",
        default=None,
        help="with --postgres: N secret-server replicas on that store, client i on replica"
        " i mod N; several counts (1,2): one phase each with the same load, compared in"
        " the report's scale section",
    )
    p.add_argument(
        "--keep-schema",
        action="store_true",
        help="with --postgres: keep the run's schema (and its rows) after the run",
    )
    p.add_argument(
        "--model",
        choices=["open", "closed"],
        default="open",
        help="open: a target --rate (default); closed: --clients concurrent loops",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests per second over all workers, open model (default 1000; --quick without"
        " --target: each target's own modest rate, echo 1000, handshake 100, secret 200)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help="connections over all workers (default: 16, at least one per worker)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: the number of cores)"
    )
    p.add_argument("--duration", type=float, default=None, help="measured seconds (default 10)")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds at the start whose results are excluded (default 1)",
    )
    p.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        help="seconds over which the rate (or the clients) ramps up (default 0)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between the workers' reports (default 1)",
    )
    p.add_argument(
        "--request-size",
        type=int,
        default=64,
        help="bytes per request (echo), or per value created, written and rotated to (secret)"
        " (default 64)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="a new connection (and TLS handshake) for every request",
    )
    p.add_argument(
        "--connect",
        metavar="HOST:PORT",
        default=None,
        help="an echo server already running on a loopback address (with --plain)",
    )
    p.add_argument(
        "--plain", action="store_true", help="plain TCP to the --connect server (no TLS)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="bound on each request in seconds, its connection included for echo and"
        " handshake and fresh domain channels (default 5); the secret and domain targets'"
        " persistent channels are bounded by the channel handshake timeout",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help="secret and domain targets: keep their servers' state (the domain, its audit"
        " log, the secret server's database) in DIR (a new directory) after the run",
    )
    p.add_argument(
        "--server-metrics",
        metavar="HOST:PORT",
        default=None,
        help="scrape this Prometheus endpoint (loopback only) each interval, for a server"
        " the tool did not start (the secret and domain targets' own are scraped anyway)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="every target briefly (2 s measured after 0.5 s of warm-up each, 0.25 s"
        " intervals), one report with a section per target; with --target, a short run of that"
        " target (3 s measured after 1 s of warm-up, 0.5 s intervals)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="write the report to DIR/report.json and its plots to DIR/*.png (needs the plots"
        " extra: pip install 'taonet[plots]')",
    )
    add_output_option(p)
    p.set_defaults(func=_run)
    sub_lt = p.add_subparsers(dest="loadtest_command", metavar="COMMAND")
    c = sub_lt.add_parser(
        "compare",
        help="show two reports side by side",
        description="Show two load-test reports side by side, with B/A.",
    )
    c.add_argument("a", metavar="A.json", type=Path)
    c.add_argument("b", metavar="B.json", type=Path)
    add_output_option(c)
    c.set_defaults(func=_compare)
    pl = sub_lt.add_parser(
        "plot",
        help="draw a saved report's plots",
        description="Draw the latency and throughput plots of a saved load-test report (a"
        " quick report: each target's) into DIR. Needs the plots extra (matplotlib).",
    )
    pl.add_argument("report", metavar="REPORT.json", type=Path)
    pl.add_argument("--out", metavar="DIR", type=Path, required=True, help="where to draw")
    pl.set_defaults(func=_plot)


def _config(args: argparse.Namespace) -> Any:
    from taonet.loadtest import LoadConfig, loopback_address

    base = QUICK if args.quick else DEFAULTS
    workers = args.workers if args.workers is not None else os.cpu_count() or 1
    clients = args.clients if args.clients is not None else max(16, workers)
    try:
        connect = None if args.connect is None else loopback_address(args.connect)
        scraped = None if args.server_metrics is None else loopback_address(args.server_metrics)
        if args.plain and connect is None:
            raise ConfigError("--plain needs --connect")
        return LoadConfig(
            target=args.target or "echo",
            model=args.model,
            rate=args.rate if args.rate is not None else base["rate"],
            clients=clients,
            workers=workers,
            duration=args.duration if args.duration is not None else base["duration"],
            warmup=args.warmup if args.warmup is not None else base["warmup"],
            ramp_up=args.ramp_up,
            interval=args.interval if args.interval is not None else base["interval"],
            request_size=args.request_size,
            mix=_mix(args.mix),
            objects=args.objects,
            fresh=args.fresh,
            connect=connect,
            tls=not args.plain,
            request_timeout=args.timeout,
            state_dir=args.state_dir,
            server_metrics=scraped,
            postgres=args.postgres,
            replicas=_replicas(args.replicas),
            keep_schema=args.keep_schema,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _mix(text: str) -> tuple[tuple[str, int], ...]:
    """``read=90,write=5`` as pairs; ConfigError if malformed."""
    pairs = []
    for item in text.split(","):
        op, sep, weight = item.strip().partition("=")
        if not sep or not weight.strip().isdigit():
            raise ConfigError(f"--mix {text[:100]!r}: each item is OP=WEIGHT (read=90)")
        pairs.append((op.strip(), int(weight)))
    return tuple(pairs)


def _replicas(text: str | None) -> tuple[int, ...]:
    """``2`` or ``1,2`` as replica counts; ConfigError if malformed."""
    if text is None:
        return ()
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() and len(item) < 4 for item in items):
        raise ConfigError(f"--replicas {text[:100]!r}: a number, or numbers split by commas")
    return tuple(int(item) for item in items)


def _run(args: argparse.Namespace) -> int:
    from taonet.loadtest import require_extras

    require_extras()
    # The live line and the table tell the story: log events from warning up, unless
    # TAONET_LOG asks for more.
    configure_logging(level=None if os.environ.get("TAONET_LOG") else "warning")
    if args.quick and args.target is None:
        return _run_quick(args)
    config = _config(args)
    _prepare_out(args.out, _names([""]))
    report = _live_run(config)
    written = None
    failed: ConfigError | None = None
    if args.out is not None:
        from taonet.loadtest import write_plots

        try:
            written = _write_report(report, args.out)
            write_plots(report, args.out)
        except ConfigError as exc:  # --out was checked before the run: show the results
            failed = exc
    if wants_json(args):
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, written)
    if failed is not None:
        saved = f"the report is in {written}" if written else "the report is not saved"
        raise ConfigError(f"{failed}; the results are above, {saved}") from None
    if report["interrupted"]:
        print(
            "taonet: interrupted; the partial report"
            + (f" is in {written}" if written else " is above"),
            file=sys.stderr,
        )
        return 130
    died = [
        w
        for w in (*report["workers"], *report.get("replicas", []), report.get("postgres") or {})
        if w.get("status") == "died"
    ]
    if died:
        where = f"; report written to {written}" if written else ""
        print(f"taonet: error: {died[0]['note']}{where}", file=sys.stderr)
        return 1
    return 0


def _write_report(report: dict[str, Any], out: Path) -> Path:
    """Write ``report`` to ``out/report.json``; its path (ConfigError if it cannot)."""
    from taonet.files import atomic_write

    written = out / "report.json"
    data = json.dumps(report, indent=2, allow_nan=False)  # valid JSON, never NaN
    atomic_write(written, data.encode() + b"\n", mode=0o644)
    return written


def _names(prefixes: list[str]) -> list[str]:
    """The files a run writes into ``--out``: its report and each prefix's plots."""
    from taonet.loadtest import plot_names

    return ["report.json", *(name for prefix in prefixes for name in plot_names(prefix))]


def _prepare_out(out: Path | None, names: list[str]) -> None:
    """Check, before any load, that the report and its plots can be written to ``out``:
    the directory is made if missing, a file can be made in it (a temporary one,
    removed), and none of ``names`` there is a directory or anything else that is not
    a file (a symbolic link is replaced, not followed). ConfigError if not."""
    if out is None:
        return
    from taonet.files import file_kind
    from taonet.loadtest import require_plots

    require_plots()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".taonet-loadtest-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot use {out} for the report: {exc.strerror}") from None
    for name in names:
        try:
            mode = (out / name).lstat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot use {out / name} for the report: {exc.strerror}") from None
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise ConfigError(
                f"cannot write {out / name}: it is {file_kind(mode)}, not a file;"
                " remove it or give another --out"
            )


def _live_run(config: Any, label: str = "") -> dict[str, Any]:
    """Run ``config`` with the live progress line on standard error; its report."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from taonet.loadtest import Progress, run_load

    errors = Console(stderr=True)
    line = Text(f"{label}starting workers...")
    with Live(line, console=errors, transient=True, auto_refresh=False) as live:

        def progress(state: Progress) -> None:
            p99 = "-" if state.recent_p99_ms is None else f"{state.recent_p99_ms:.2f} ms"
            lost = f"  lost workers {state.lost}" if state.lost else ""
            phase = "warm-up  " if state.elapsed < config.warmup else ""
            live.update(
                Text(
                    f"{label}{state.elapsed:6.1f} s  {phase}ok {state.ok}  errors {state.errors}"
                    f"  {state.recent_rate:,.0f}/s  p99 {p99}  workers {len(state.workers)}{lost}"
                ),
                refresh=True,
            )

        report: dict[str, Any] = run_load(config, on_progress=progress)
    return report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_report(report: dict[str, Any], written: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    results = report["results"]
    latency = results["latency_ms"]
    conf = report["configuration"]
    title = (
        f"taonet loadtest: {conf['target']}, {conf['model']} model,"
        f" {conf['workers']} workers, {conf['clients']} clients"
    )
    if conf.get("postgres"):
        count = len(report.get("replicas", []))
        last = " (the last phase)" if report.get("scale") else ""
        title += f", PostgreSQL, {count} replica{'s' if count != 1 else ''}{last}"
    # Strings from a report are shown as they are, never read as rich markup.
    table = Table(title=Text(title))
    table.add_column("requests")
    for column in ("p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "ok/s", "ok", "errors"):
        table.add_column(column, justify="right")
    table.add_row(
        "all",
        *(_ms(latency[k]) for k in ("p50", "p90", "p99", "p99_9", "max")),
        f"{results['throughput_per_s']:,.1f}",
        str(results["ok"]),
        Text(", ".join(f"{k} {v}" for k, v in results["errors"].items()) or "0"),
    )
    operations = results.get("operations", {})
    if len(operations) > 1:
        for op, stats in operations.items():
            ops_latency = stats["latency_ms"]
            table.add_row(
                Text(op),
                *(_ms(ops_latency[k]) for k in ("p50", "p90", "p99", "p99_9", "max")),
                "",
                str(stats["ok"]),
                str(stats["errors"]),
            )
    server = report.get("server")
    # The server's own rows: the target's server, or each replica's (``servers``).
    sections = [("server (est.)", server)] + [
        (f"replica {index} (est.)", section)
        for index, section in enumerate(report.get("servers") or [])
    ]
    shown = False
    for label, section in sections:
        measured = section.get("measured") if isinstance(section, dict) else None
        if not measured:
            continue
        shown = True
        estimates = measured["latency_ms_est"]
        failed = sum(n for k, n in measured["requests"].items() if not k.endswith(":ok"))
        table.add_row(
            label,
            *(_ms(estimates[k]) for k in ("p50", "p90", "p99")),
            "-",
            "-",
            f"{measured['ok_per_s']:,.1f}",
            str(sum(n for k, n in measured["requests"].items() if k.endswith(":ok"))),
            str(failed),
        )
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no terminal width to fit
        console = Console(width=_PIPE_WIDTH)
    console.print(table)
    if shown:
        console.print(
            "(est.): the server's own figures over the measured window, scraped from its"
            " /metrics; percentiles estimated from its histogram buckets (client minus"
            " server: the network, TLS and the client)",
            soft_wrap=True,
        )
    for label, section in sections:
        if isinstance(section, dict) and not section.get("measured"):
            console.print(
                f"{label.removesuffix(' (est.)')} metrics: {section['scrapes']} scrapes,"
                f" failed {section['failed_scrapes']}",
                soft_wrap=True,
            )
    if report.get("scale"):
        console.print(_scale_table(report["scale"]))
    for replica in report.get("replicas", []):
        if "served_per_s" in replica:
            console.print(
                f"replica {replica['index']} (pid {replica['pid']}): served"
                f" {replica['served']} requests in the measured window, by its own metrics"
                f" ({replica['served_per_s']:,.1f}/s)",
                soft_wrap=True,
                highlight=False,
            )
        elif replica.get("status") == "died":
            console.print(replica["note"], soft_wrap=True, markup=False)
    console.print(report["rate"]["note"], soft_wrap=True, markup=False)
    for worker in report["workers"]:
        if worker.get("status") == "died":
            console.print(worker["note"], soft_wrap=True, markup=False)
    if written is not None:
        console.print(f"report: {written}", soft_wrap=True, highlight=False, markup=False)


def _scale_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="scale: one phase per replica count, the same load")
    for column in ("replicas", "offered /s", "achieved /s", "p50 ms", "p99 ms", "p99.9 ms",
                   "errors", "sustained", "per replica /s"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        offered = row["offered_per_s"]
        table.add_row(
            str(row["replicas"]),
            f"{offered:,.1f}" if offered is not None else f"{row['concurrency']} clients",
            f"{row['achieved_per_s']:,.1f}",
            *(_ms(row[k]) for k in ("p50_ms", "p99_ms", "p99_9_ms")),
            str(row["errors"]),
            "-" if row["sustained"] is None else ("yes" if row["sustained"] else "NO"),
            ", ".join("-" if v is None else f"{v:,.1f}" for v in row["served_per_s"]),
        )
    return table


def _read_report(path: Path) -> dict[str, Any]:
    from taonet.files import read_file

    if not path.exists():
        raise NotFoundError(f"{path}: no such report")

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        document = json.loads(read_file(path, limit=MAX_REPORT_BYTES), parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:  # nested too deep for the parser: RecursionError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ConfigError(f"{path} is not a load-test report: {reason}") from None
    if not isinstance(document, dict) or not (
        "results" in document or document.get("kind") == "quick"
    ):
        raise ConfigError(f"{path} is not a load-test report (no results)")
    return document


def _compare(args: argparse.Namespace) -> int:
    from taonet.loadtest import compare_runs

    a, b = _read_report(args.a), _read_report(args.b)
    rows = compare_runs(a, b)
    several = len({row[0] for row in rows}) > 1
    if wants_json(args):
        print(
            json.dumps(
                [
                    {"target": r[0], "figure": r[1], "a": r[2], "b": r[3], "b_over_a": r[4] or None}
                    for r in rows
                ],
                indent=2,
                allow_nan=False,
            )
        )
        return 0
    from taonet.loadtest import require_extras

    require_extras()
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Every header and cell is Text: what comes from a report (or a file name) is
    # shown as it is, never read as rich markup (no style, no link, no MarkupError).
    table = Table(title="taonet loadtest compare")
    table.add_column("")
    table.add_column(Text(f"A: {args.a}"), justify="right")
    table.add_column(Text(f"B: {args.b}"), justify="right")
    table.add_column("B/A", justify="right")
    for target, label, va, vb, ratio in rows:
        if several and label == "target":
            table.add_section()
        table.add_row(
            Text(f"{target[:40]}: {label}" if several else str(label)),
            Text("-" if va is None else str(va)),
            Text("-" if vb is None else str(vb)),
            Text(str(ratio)),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=_PIPE_WIDTH)
    console.print(table)
    return 0


# --- taonet loadtest --quick (every target) and taonet loadtest plot --------------


def _run_quick(args: argparse.Namespace) -> int:
    """Every target briefly (see the module's text); 1 if one failed, 130 on Ctrl-C."""
    from taonet.loadtest import quick_configs, run_quick

    if args.connect is not None:
        raise UsageError("--quick runs every target on servers it starts: --connect needs --target")
    if args.state_dir is not None:
        raise UsageError(
            "--quick without --target runs every target, each on servers of its own:"
            " --state-dir needs --target secret or --target domain"
        )
    base = _config(args)
    targets = _quick_targets()
    configs = quick_configs(
        base,
        targets=targets,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        interval=args.interval,
    )
    _prepare_out(args.out, _names([f"{target}-" for target in targets]))

    def announce(number: int, total: int, target: str) -> None:
        print(f"taonet loadtest --quick: {number}/{total} {target}", file=sys.stderr, flush=True)

    finished: dict[str, dict[str, Any]] = {}

    def run(config: Any) -> dict[str, Any]:
        finished[config.target] = _live_run(config, f"{config.target}: ")
        return finished[config.target]

    try:
        document = run_quick(configs, out=args.out, run=run, on_target=announce)
    except ConfigError as exc:  # the report could not be saved: show what was measured
        if wants_json(args):
            print(json.dumps({"targets": finished}, indent=2))
        else:
            for report in finished.values():
                _print_report(report, None)
        raise ConfigError(f"{exc}; the results so far are above, the report is not saved") from None
    written = None if args.out is None else args.out / "report.json"
    if wants_json(args):
        print(json.dumps(document, indent=2))
    else:
        for target, section in document["targets"].items():
            if section["report"] is not None:
                _print_report(section["report"], None)
            print(
                f"{target}: {section['status']}"
                + (f" ({section['reason']})" if section["reason"] else "")
            )
        if written is not None:
            print(f"report: {written}")
    if document["interrupted"]:
        print(
            "taonet: interrupted; the partial report"
            + (f" is in {written}" if written else " is above"),
            file=sys.stderr,
        )
        return 130
    if document["failed"]:
        first = document["targets"][document["failed"][0]]
        where = f"; report written to {written}" if written else ""
        print(
            f"taonet: error: {len(document['failed'])} target(s) failed:"
            f" {', '.join(document['failed'])} (first: {first['reason']}){where}",
            file=sys.stderr,
        )
        return 1
    return 0


def _quick_targets() -> tuple[str, ...]:
    """The targets ``--quick`` runs: every one, or those ``TAONET_LOADTEST_QUICK_TARGETS``
    names (ConfigError for a name that is no target, or when it names none)."""
    from taonet.loadtest import TARGETS

    value = os.environ.get(QUICK_TARGETS_VARIABLE)
    if value is None:
        return tuple(TARGETS)
    names = {name.strip() for name in value.split(",")} - {""}
    unknown = sorted(names - set(TARGETS))
    if unknown:
        raise ConfigError(
            f"{QUICK_TARGETS_VARIABLE} names {unknown[0][:40]!r}, no target:"
            f" the targets are {', '.join(TARGETS)}"
        )
    if not names:
        raise ConfigError(f"{QUICK_TARGETS_VARIABLE} is set but names no target")
    return tuple(target for target in TARGETS if target in names)


def _plot(args: argparse.Namespace) -> int:
    """Draw a saved report's plots (each target's, for a quick report)."""
    from taonet.loadtest import (
        is_quick_report,
        require_plots,
        target_reports,
        write_plots,
    )

    require_plots()
    document = _read_report(args.report)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use {args.out} for the plots: {exc.strerror}") from None
    quick = is_quick_report(document)
    written = []
    try:
        for target, report in target_reports(document).items():
            written += write_plots(report, args.out, prefix=f"{target}-" if quick else "")
    except ConfigError as exc:
        raise ConfigError(f"{args.report}: {exc}") from None
    if not written:
        raise ConfigError(f"{args.report}: no target of this quick report has results to plot")
    for path in written:
        print(path)
    return 0
