"""The secret server's capacity: reads/s at p99 < 10 ms, on SQLite, on PostgreSQL with
one replica and with two, against the load generator's own ceiling in the same run.

Every figure comes from ``taonet loadtest``'s own machinery (:mod:`taonet.loadtest`),
``--workers`` worker processes (default 2) and ``--clients`` persistent channels
(default 16), all on 127.0.0.1:

* ``echo_ceiling_per_s``: the closed model against the tool's TLS echo server (64-byte
  requests): what the generator drives at most. A capacity near it would measure the
  tool, not the server (``capacity_vs_ceiling`` says how near).
* for each store (``sqlite``; ``pg_1``, ``pg_2``: one and two secret-server replicas on
  one PostgreSQL, client i on replica i mod N), a reads-only mix (``--mix read=1``) over
  ``--objects`` names of 32 bytes. First the closed model (``--clients`` loops):
  ``saturation_per_s``, the rate the store answers at when never left idle, and its
  p99. Then a rate search with the open model (latency from each send's intended
  time): the first step offers half the saturation rate; while steps pass (p99 <
  ``--p99-ms``, default 10, and the rate sustained: at least 95 % of it achieved, at
  most 1 % missed or failed) the next offers 1.5 times more, up to the saturation rate;
  a first step that fails halves, down to 1/64 of it (1/16 with ``--quick``); after
  the first failure,
  ``--bisect`` steps (default 2; 1 with ``--quick``) at the geometric middle of the
  best pass and the lowest fail. Every rate is relative to one measured in the same
  run, so the search does not depend on the machine's speed. The servers are started
  once per store (one world, one schema; :func:`taonet.loadtest.run_series`) and each
  step is a new set of workers against them. ``capacity_per_s`` is the achieved rate
  of the best passing step (0 if none passed), with its p50/p99/p99.9; ``steps``
  lists every open-model step.
* ratios: ``pg_1_vs_sqlite_capacity``, ``pg_2_vs_pg_1_capacity`` (the scale-out) and
  the same of the saturation rates (``..._saturation``), and each store's
  ``capacity_vs_ceiling`` and ``saturation_vs_ceiling``.

PostgreSQL: ``--postgres URL`` (loopback or a Unix socket only; the run's tables go in
a fresh schema dropped after), else a private server started like the tests' one
(``tests/pg.py``, fsync on: every commit durable, as SQLite's synchronous=FULL), or
none with ``--no-pg``. The generator, the servers and PostgreSQL share the machine's
cores: the figures are for this machine as a whole, as a one-box deployment sees it,
and other work on it shows in them (``load_average_at_start`` and ``..._at_end``, the
1, 5 and 15 minute load averages, say how busy it was).

    python loadtests/secret_capacity.py [--quick] [--seconds S] [--bisect N]
        [--postgres URL | --no-pg] [--workers N] [--clients N]

Prints one line per step and a table, then as its last line one JSON object with every
figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

from taonet.loadtest import LoadConfig, run_load, run_series


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    latency = report["results"]["latency_ms"]
    return {
        "offered_per_s": report["rate"].get("target_per_s"),
        "achieved_per_s": report["rate"]["achieved_per_s"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "p99_9_ms": latency["p99_9"],
        "errors": report["results"]["error_count"],
        "sustained": report["rate"].get("sustained"),
    }


class _Search:
    """The steps of one store (see the module's text)."""

    def __init__(
        self, name: str, config: LoadConfig, p99_ms: float, bisect: int, lowest: float
    ) -> None:
        self.name = name
        self.lowest = lowest
        self.config = config
        self.p99_ms = p99_ms
        self.bisect = bisect
        self.saturation: dict[str, Any] | None = None
        self.rate = 0.0
        self.best: dict[str, Any] | None = None
        self.fail: float | None = None
        self.middles = 0
        self.steps: list[dict[str, Any]] = []

    def passed(self, figures: dict[str, Any]) -> bool:
        p99 = figures["p99_ms"]
        return bool(figures["sustained"]) and p99 is not None and p99 < self.p99_ms

    def next_config(self, reports: list[dict[str, Any]]) -> LoadConfig | None:
        if not reports:  # the closed model first: the rate the store saturates at
            return attrs.evolve(self.config, model="closed")
        figures = _figures(reports[-1])
        if self.saturation is None:
            self.saturation = figures
            print(f"{self.name:<8} saturation: {figures['achieved_per_s']:9,.0f}/s (closed"
                  f" model), p99 {figures['p99_ms']} ms", flush=True)  # fmt: skip
            self.rate = max(1.0, figures["achieved_per_s"] / 2)
            return attrs.evolve(self.config, rate=self.rate)
        rate = self.rate
        figures |= {"rate": round(rate, 1), "passed": self.passed(figures)}
        self.steps.append(figures)
        print(
            f"{self.name:<8} step {len(self.steps)}: {rate:9,.0f}/s offered,"
            f" {figures['achieved_per_s']:9,.0f}/s achieved, p99 {figures['p99_ms']} ms,"
            f" errors {figures['errors']}: {'pass' if figures['passed'] else 'FAIL'}",
            flush=True,
        )
        top = self.saturation["achieved_per_s"]
        if figures["passed"]:
            if self.best is None or figures["achieved_per_s"] > self.best["achieved_per_s"]:
                self.best = figures
        else:
            self.fail = rate if self.fail is None else min(self.fail, rate)
        if self.best is None:  # nothing passed yet: go down
            self.rate = rate / 2
            if self.rate < top / self.lowest:
                return None
        elif self.fail is None:  # everything passed: go up, to the saturation
            if rate >= top:
                return None
            self.rate = min(rate * 1.5, top)
        elif self.middles < self.bisect:
            self.middles += 1
            self.rate = math.sqrt(self.best["rate"] * self.fail)
        else:
            return None
        return attrs.evolve(self.config, rate=self.rate)

    def result(self, ceiling: float) -> dict[str, Any]:
        assert self.saturation is not None
        out: dict[str, Any] = {
            "saturation_per_s": self.saturation["achieved_per_s"],
            "saturation_p99_ms": self.saturation["p99_ms"],
            "saturation_vs_ceiling": round(self.saturation["achieved_per_s"] / ceiling, 3),
            "steps": self.steps,
        }
        if self.best is None:
            out |= {"capacity_per_s": 0.0, "note": f"no step passed (lowest {self.rate:.0f}/s)"}
        else:
            out |= {
                "capacity_per_s": self.best["achieved_per_s"],
                "p50_ms": self.best["p50_ms"],
                "p99_ms": self.best["p99_ms"],
                "p99_9_ms": self.best["p99_9_ms"],
                "capacity_vs_ceiling": round(self.best["achieved_per_s"] / ceiling, 3),
            }
            if self.fail is None:
                out["note"] = "every step passed: the capacity is at least the saturation rate"
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps, one bisection")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per step")
    parser.add_argument("--bisect", type=int, default=None, help="steps after the first fail")
    parser.add_argument("--p99-ms", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL on this machine")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    warmup = 0.5 if args.quick else 1.0
    bisect = args.bisect if args.bisect is not None else (1 if args.quick else 2)

    ceiling_report = run_load(
        LoadConfig(target="echo", model="closed", workers=args.workers, clients=args.clients,
                   duration=seconds, warmup=warmup, interval=0.5)
    )  # fmt: skip
    ceiling = float(ceiling_report["results"]["throughput_per_s"])
    print(f"echo ceiling: {ceiling:,.0f}/s (closed model, {args.clients} clients)", flush=True)
    out: dict[str, Any] = {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "seconds": seconds, "workers": args.workers, "clients": args.clients,
        "p99_limit_ms": args.p99_ms, "echo_ceiling_per_s": ceiling,
        "echo_ceiling_p99_ms": ceiling_report["results"]["latency_ms"]["p99"],
    }  # fmt: skip

    base = LoadConfig(
        target="secret", workers=args.workers, clients=args.clients, duration=seconds,
        warmup=warmup, interval=0.5, mix=(("read", 1),), objects=args.objects, request_size=32,
    )  # fmt: skip
    stores: list[tuple[str, LoadConfig]] = [("sqlite", base)]
    pg = None
    pg_url = args.postgres
    try:
        if pg_url is None and not args.no_pg:
            if shutil.which("initdb") is None:
                out["postgresql"] = "not measured: initdb not on PATH (or give --postgres)"
            else:
                from tests.pg import PgServer

                pg = PgServer(fsync=True)
                pg.start()
                pg_url = pg.url()
        if pg_url is not None:
            for count in (1, 2):
                config = LoadConfig(**{**_fields(base), "postgres": pg_url, "replicas": (count,)})
                stores.append((f"pg_{count}", config))
        for name, config in stores:
            search = _Search(name, config, args.p99_ms, bisect, 16 if args.quick else 64)
            run_series(config, search.next_config)
            out[name] = search.result(ceiling)
    finally:
        if pg is not None:
            pg.remove()

    def capacity(name: str) -> float:
        return float(out.get(name, {}).get("capacity_per_s", 0.0))

    def saturation(name: str) -> float:
        return float(out.get(name, {}).get("saturation_per_s", 0.0))

    for figure, ratio in (("capacity", capacity), ("saturation", saturation)):
        if ratio("sqlite") and "pg_1" in out:
            out[f"pg_1_vs_sqlite_{figure}"] = round(ratio("pg_1") / ratio("sqlite"), 3)
        if ratio("pg_1") and "pg_2" in out:
            out[f"pg_2_vs_pg_1_{figure}"] = round(ratio("pg_2") / ratio("pg_1"), 3)
    head = ("store", "reads/s", "p50 ms", "p99 ms", "p99.9 ms", "of ceiling", "saturation/s")
    print(f"{head[0]:<10}" + "".join(f"{h:>14}" for h in head[1:]))
    for name, _ in stores:
        r = out[name]
        print(f"{name:<10}{r['capacity_per_s']:>14,.0f}{r.get('p50_ms') or 0:>14.3f}"
              f"{r.get('p99_ms') or 0:>14.3f}{r.get('p99_9_ms') or 0:>14.3f}"
              f"{r.get('capacity_vs_ceiling', 0):>14.3f}"
              f"{r['saturation_per_s']:>14,.0f}")  # fmt: skip
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


def _fields(config: LoadConfig) -> dict[str, Any]:
    return attrs.asdict(config, recurse=False)


if __name__ == "__main__":
    main()
