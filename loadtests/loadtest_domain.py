"""The domain target of ``taonet loadtest``: certificates per second against bare
handshakes, and where the latency goes (the server's own figures, scraped).

Each subject is one :func:`taonet.loadtest.run_load` run, closed model (``--clients``
clients sending as fast as they are answered, ``--workers`` worker processes), against
a server the tool runs in a process of its own on 127.0.0.1:

* ``handshake``: bare Tao channel handshakes (the ``handshake`` target): the baseline;
* ``certs_fresh``: the ``domain`` target with ``fresh``: a new anonymous channel per
  certificate, as :func:`taonet.provision.request_certificate` (what programs do);
* ``certs_persistent``: the ``domain`` target on one channel per client (the service's
  certification and audit write without the handshake).

For the two domain subjects, ``server_p99_ms`` is the service's own p99 over the
measured window (estimated from its histogram buckets, scraped from its /metrics)
and ``server_share_p99`` its ratio to the client's p99 (the rest is the network, TLS
and the client); ``server_counted`` is the requests the service counted over the
whole run divided by those the clients sent (1.0: every one seen by both).

Subjects run in the order handshake, fresh, persistent for ``--rounds`` rounds; rates
are medians, and ``certs_fresh_vs_handshakes`` and ``persistent_vs_fresh`` are medians
of per-round ratios.

    python loadtests/loadtest_domain.py [--quick] [--seconds S] [--rounds N]
        [--clients N] [--workers N]

Prints a table, then as its last line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from taonet.loadtest import LoadConfig, run_load


def _run(target: str, fresh: bool, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    config = LoadConfig(
        target=target, model="closed", workers=args.workers, clients=args.clients,
        duration=seconds, warmup=min(1.0, seconds / 2), interval=0.5, fresh=fresh,
    )  # fmt: skip
    report = run_load(config)
    results = report["results"]
    figures: dict[str, Any] = {
        "per_s": results["throughput_per_s"],
        "p50_ms": results["latency_ms"]["p50"],
        "p99_ms": results["latency_ms"]["p99"],
        "errors": results["error_count"],
    }
    server = report.get("server")
    if server and server.get("measured") and server.get("run"):
        p99 = server["measured"]["latency_ms_est"]["p99"]
        figures["server_p99_ms"] = p99
        figures["server_share_p99"] = round(p99 / figures["p99_ms"], 3) if p99 else None
        figures["audit_p99_ms"] = server["measured"]["audit_write_ms_est"]["p99"]
        sent = sum(int(w.get("sent", 0)) for w in report["workers"])
        counted = sum(server["run"]["requests"].values())
        figures["server_counted"] = round(counted / sent, 4) if sent else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 3)

    runs: dict[str, list[dict[str, Any]]] = {
        "handshake": [], "certs_fresh": [], "certs_persistent": [],
    }  # fmt: skip
    for _ in range(rounds):
        runs["handshake"].append(_run("handshake", False, args, seconds))
        runs["certs_fresh"].append(_run("domain", True, args, seconds))
        runs["certs_persistent"].append(_run("domain", False, args, seconds))

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if r.get(key) is not None]
        return float(statistics.median(values)) if values else None

    out: dict[str, Any] = {
        "seconds": seconds, "rounds": rounds, "clients": args.clients, "workers": args.workers,
    }  # fmt: skip
    keys = ("per_s", "p50_ms", "p99_ms", "errors", "server_p99_ms", "server_share_p99",
            "audit_p99_ms", "server_counted")  # fmt: skip
    print(f"{'subject':<18}{'per s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
          f"{'srv p99':>9}{'srv/cli':>8}{'audit p99':>10}{'counted':>8}")  # fmt: skip
    for name in runs:
        figures = {key: median(name, key) for key in keys}
        out[name] = figures

        def cell(key: str, width: int, fmt: str, figures: dict[str, Any] = figures) -> str:
            value = figures[key]
            return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"

        print(f"{name:<18}{cell('per_s', 10, ',.0f')}{cell('p50_ms', 9, '.2f')}"
              f"{cell('p99_ms', 9, '.2f')}{cell('errors', 7, '.0f')}"
              f"{cell('server_p99_ms', 9, '.2f')}{cell('server_share_p99', 8, '.2f')}"
              f"{cell('audit_p99_ms', 10, '.2f')}{cell('server_counted', 8, '.3f')}")  # fmt: skip
    pairs = zip(runs["handshake"], runs["certs_fresh"], strict=True)
    out["certs_fresh_vs_handshakes"] = round(
        statistics.median(c["per_s"] / h["per_s"] for h, c in pairs), 3
    )
    pairs = zip(runs["certs_fresh"], runs["certs_persistent"], strict=True)
    out["persistent_vs_fresh"] = round(
        statistics.median(p["per_s"] / f["per_s"] for f, p in pairs), 3
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
