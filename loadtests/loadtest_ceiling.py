"""The load generator's own ceiling: what ``taonet loadtest`` drives against its echo
target, so that a reader of a server's figures knows they measure the server.

Each subject is one :func:`taonet.loadtest.run_load` run, closed model (the clients
send as fast as they are answered), against the tool's own TLS echo server (a
process of its own) on 127.0.0.1, 64-byte requests on persistent connections:

* ``echo_1w``: one worker process; ``echo_2w``: two (the figure to report);
* ``handshake_2w``: two workers, bare Tao channel handshakes (the ``handshake``
  target) on ``--clients`` clients, for scale: a handshake costs far more than an
  echo, so this subject measures the channel server, not the generator;
* ``open_2w``: two workers, open model at ``--open-share`` (default 0.5) of
  ``echo_2w``'s rate: whether that rate is sustained, and its p99.

Subjects run in the order 1w, 2w, handshake, open, for ``--rounds`` rounds; rates are
medians over the rounds, and ``two_workers_vs_one`` (echo_2w / echo_1w) and
``handshake_vs_echo`` (handshake_2w / echo_2w) are medians of per-round ratios.

    python loadtests/loadtest_ceiling.py [--quick] [--seconds S] [--rounds N] [--clients N]

Prints a table, then as its last line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from taonet.loadtest import LoadConfig, run_load


def _closed(target: str, workers: int, clients: int, seconds: float) -> dict[str, Any]:
    config = LoadConfig(
        target=target, model="closed", workers=workers, clients=clients,
        duration=seconds, warmup=min(1.0, seconds / 2), interval=0.5,
    )  # fmt: skip
    return run_load(config)


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    results = report["results"]
    return {
        "per_s": results["throughput_per_s"],
        "p50_ms": results["latency_ms"]["p50"],
        "p99_ms": results["latency_ms"]["p99"],
        "errors": results["error_count"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--open-share", type=float, default=0.5)
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 3)

    runs: dict[str, list[dict[str, Any]]] = {
        "echo_1w": [], "echo_2w": [], "handshake_2w": [], "open_2w": [],
    }  # fmt: skip
    sustained = []
    for _ in range(rounds):
        runs["echo_1w"].append(_figures(_closed("echo", 1, args.clients, seconds)))
        runs["echo_2w"].append(_figures(_closed("echo", 2, args.clients, seconds)))
        runs["handshake_2w"].append(_figures(_closed("handshake", 2, args.clients, seconds)))
        rate = max(1.0, runs["echo_2w"][-1]["per_s"] * args.open_share)
        report = run_load(
            LoadConfig(model="open", workers=2, clients=args.clients, rate=rate,
                       duration=seconds, warmup=min(1.0, seconds / 2), interval=0.5)
        )  # fmt: skip
        runs["open_2w"].append(_figures(report))
        sustained.append(report["rate"]["sustained"])

    def median(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "clients": args.clients}
    print(f"{'subject':<14}{'per s':>12}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name in runs:
        figures = {key: median(name, key) for key in ("per_s", "p50_ms", "p99_ms", "errors")}
        out[name] = figures
        print(f"{name:<14}{figures['per_s']:>12,.0f}{figures['p50_ms']:>10.3f}"
              f"{figures['p99_ms']:>10.3f}{figures['errors']:>8.0f}")  # fmt: skip
    pairs = zip(runs["echo_1w"], runs["echo_2w"], strict=True)
    out["two_workers_vs_one"] = round(
        statistics.median(b["per_s"] / a["per_s"] for a, b in pairs), 3
    )
    pairs = zip(runs["echo_2w"], runs["handshake_2w"], strict=True)
    out["handshake_vs_echo"] = round(
        statistics.median(h["per_s"] / e["per_s"] for e, h in pairs), 4
    )
    out["open_2w_share"] = args.open_share
    out["open_2w_sustained"] = all(sustained)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
