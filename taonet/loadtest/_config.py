"""What a load test does: its model, its timing, its target and its bounds.

:class:`LoadConfig` is a frozen, validated description of one run. Pure: no I/O
(``loopback_address`` parses, it does not resolve names), so the parent process can
pass it to each worker as it is.

Timeline, in seconds from the common start: ramp-up over ``[0, ramp_up)`` (the open
model's rate grows linearly from 0 to its target; the closed model starts its clients
one after another), warm-up over ``[0, warmup)`` whose results are excluded, and the
measured window ``[warmup, warmup + duration)``; the run ends at its end.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Iterable
from typing import Final, Literal

import attrs

from taonet import ConfigError
from taonet.loadtest._pgurl import check_postgres_url, redact

__all__ = [
    "MAX_CLIENTS",
    "MAX_RATE",
    "MAX_REQUEST_SIZE",
    "LoadConfig",
    "intended_time",
    "loopback_address",
    "offered_between",
    "split",
]

#: At most this many connections open at once, over all workers.
MAX_CLIENTS: Final = 1024
#: At most this many requests per second offered, over all workers.
MAX_RATE: Final = 1_000_000.0
#: The largest request (and echo reply) in bytes.
MAX_REQUEST_SIZE: Final = 1 << 20
#: The longest run, warm-up included, in seconds (a load test stops by itself).
MAX_RUN_SECONDS: Final = 3600.0
#: The shortest interval between the workers' reports, in seconds (each interval is a
#: histogram per worker and a line of the timeline: the bound keeps them few).
MIN_INTERVAL: Final = 0.1

Model = Literal["open", "closed"]
TARGETS: Final = ("echo", "handshake", "secret", "domain")
#: The targets whose servers the tool runs and scrapes itself.
OWN_SERVERS: Final = ("secret", "domain")
#: The operations the secret target's mix may weigh.
OPERATIONS: Final = ("read", "write", "list", "rotate")
#: The largest value the secret target writes.
MAX_VALUE_SIZE: Final = 65536
#: The most objects the secret target creates before the run.
MAX_OBJECTS: Final = 10_000
#: The most secret-server replicas a run starts.
MAX_REPLICAS: Final = 8


def loopback_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a loopback address, or ConfigError.

    Only literal loopback addresses (127.0.0.0/8, ::1) and ``localhost`` (taken as
    127.0.0.1, not looked up) are accepted: a load test sends traffic to this machine
    and nowhere else.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"address {text!r} has no port between 1 and 65535")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"address {text!r}: only loopback IP addresses (127.0.0.0/8, ::1) or localhost"
            " may be load-tested"
        ) from None
    if not ip.is_loopback or (ip.version == 6 and ip != ipaddress.IPv6Address("::1")):
        raise ConfigError(
            f"address {text!r} is not a loopback address: a load test only targets this machine"
        )
    return str(ip), int(port_text)


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{attribute.name} must be a positive number, not {value!r}")


def _not_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{attribute.name} must be zero or more, not {value!r}")


def _pairs(pairs: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    return tuple((str(op), int(weight)) for op, weight in pairs)


def _ints(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(values)


def _check_address(_instance: object, _attribute: object, value: tuple[str, int] | None) -> None:
    if value is not None:
        loopback_address(f"[{value[0]}]:{value[1]}")


@attrs.frozen(kw_only=True)
class LoadConfig:
    """One load test: target, model, timing and bounds (validated on creation)."""

    #: What is loaded: ``echo`` (a TLS echo server; the generator's own ceiling),
    #: ``handshake`` (bare Tao channel handshakes against a local domain's server),
    #: ``secret`` (a secret server: a mix of read, write, list and rotate) or
    #: ``domain`` (a domain service: program certificates issued).
    target: str = attrs.field(default="echo")
    #: ``open``: a target rate, latency from each send's intended time; ``closed``:
    #: ``clients`` loops that each send when their previous answer came.
    model: Model = attrs.field(default="open")
    #: Requests per second offered over all workers (open model).
    rate: float = attrs.field(default=1000.0, validator=_positive)
    #: Connections (and concurrent requests) over all workers.
    clients: int = attrs.field(default=16)
    #: Worker processes, each with its own trio loop and share of clients and rate.
    workers: int = attrs.field(default=1)
    duration: float = attrs.field(default=10.0, validator=_positive)
    warmup: float = attrs.field(default=1.0, validator=_not_negative)
    ramp_up: float = attrs.field(default=0.0, validator=_not_negative)
    #: Seconds between the workers' reports (the timeline's resolution).
    interval: float = attrs.field(default=1.0, validator=_positive)
    #: Request size in bytes (the echo target answers as many); the secret target's
    #: value size (of the objects it creates, writes and rotates to).
    request_size: int = attrs.field(default=64)
    #: The secret target's operations and their weights.
    mix: tuple[tuple[str, int], ...] = attrs.field(
        default=(("read", 90), ("write", 5), ("list", 4), ("rotate", 1)),
        converter=_pairs,
    )
    #: How many names the secret target creates and works on.
    objects: int = attrs.field(default=100)
    #: A new connection for every request (measures the handshake) instead of one per client.
    fresh: bool = attrs.field(default=False)
    #: An echo server already running (loopback only); None: the tool starts its own.
    connect: tuple[str, int] | None = attrs.field(default=None, validator=_check_address)
    #: TLS to the echo server (the tool's own server always speaks TLS).
    tls: bool = attrs.field(default=True)
    #: Bound on each request (and each connection attempt), in seconds.
    request_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Where the tool's own servers (secret and domain targets) keep their state (the
    #: domain, its audit log, the secret server's database), kept after the run; None:
    #: a temporary directory, removed after.
    state_dir: str | None = attrs.field(default=None)
    #: A Prometheus endpoint (loopback only) to scrape each interval, for a server the
    #: tool did not start; the secret and domain targets' own servers are scraped
    #: without it.
    server_metrics: tuple[str, int] | None = attrs.field(default=None, validator=_check_address)
    #: The secret target on PostgreSQL: a libpq URL to a loopback host or a Unix
    #: socket (its tables in a fresh schema, dropped after; see ``_replicas``). None:
    #: SQLite in a temporary directory.
    postgres: str | None = attrs.field(default=None)
    #: Secret-server replicas on that PostgreSQL: one count (``(2,)``: 2 replicas,
    #: client i on replica i mod 2), or several, one phase each with the same load
    #: (the report's ``scale``). Empty: one replica.
    replicas: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    #: Keep the load test's schema after the run (for a look at its rows).
    keep_schema: bool = attrs.field(default=False)

    def __attrs_post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r} (known: {', '.join(TARGETS)})")
        if self.model not in ("open", "closed"):
            raise ConfigError(f"model must be open or closed, not {self.model!r}")
        if self.rate > MAX_RATE:
            raise ConfigError(f"rate {self.rate:g}/s is above the bound of {MAX_RATE:g}/s")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be between 1 and 64, not {self.workers}")
        if not self.workers <= self.clients <= MAX_CLIENTS:
            raise ConfigError(
                f"clients must be between the number of workers ({self.workers}) and"
                f" {MAX_CLIENTS}, not {self.clients}"
            )
        if not 1 <= self.request_size <= MAX_REQUEST_SIZE:
            raise ConfigError(
                f"request size must be between 1 and {MAX_REQUEST_SIZE} bytes,"
                f" not {self.request_size}"
            )
        if self.warmup + self.duration > MAX_RUN_SECONDS:
            raise ConfigError(f"warm-up and duration together exceed {MAX_RUN_SECONDS:g} s")
        if not MIN_INTERVAL <= self.interval <= self.warmup + self.duration:
            raise ConfigError(
                f"the interval must be between {MIN_INTERVAL:g} s and the run's length"
                f" ({self.warmup + self.duration:g} s), not {self.interval:g} s"
            )
        if self.ramp_up > self.warmup + self.duration:
            raise ConfigError(
                f"ramp-up ({self.ramp_up:g} s) is longer than the run"
                f" ({self.warmup + self.duration:g} s)"
            )
        if any(op not in OPERATIONS or weight < 0 for op, weight in self.mix) or not any(
            weight > 0 for _, weight in self.mix
        ):
            raise ConfigError(
                f"the mix weighs {', '.join(OPERATIONS)} with whole numbers, at least one above 0"
            )
        if not 1 <= self.objects <= MAX_OBJECTS:
            raise ConfigError(f"objects must be between 1 and {MAX_OBJECTS}, not {self.objects}")
        if self.target == "secret" and self.request_size > MAX_VALUE_SIZE:
            raise ConfigError(f"the secret target's values are at most {MAX_VALUE_SIZE} bytes")
        if self.target != "echo" and self.connect is not None:
            raise ConfigError(f"the {self.target} target runs its own server: no --connect")
        if self.state_dir is not None and self.target not in OWN_SERVERS:
            raise ConfigError(f"the {self.target} target keeps no state: no state directory")
        if self.server_metrics is not None and self.target in OWN_SERVERS:
            raise ConfigError(
                f"the {self.target} target's own server is scraped: no --server-metrics"
            )
        if self.connect is None and not self.tls:
            raise ConfigError("the tool's own echo server speaks TLS: --plain needs --connect")
        self._check_postgres()

    def _check_postgres(self) -> None:
        if self.postgres is not None:
            if self.target != "secret":
                raise ConfigError("--postgres is for the secret target")
            check_postgres_url(self.postgres, os.environ)
        if self.replicas and self.postgres is None:
            raise ConfigError("--replicas needs --postgres: replicas share one PostgreSQL store")
        if self.keep_schema and self.postgres is None:
            raise ConfigError("--keep-schema needs --postgres")
        if self.postgres is not None and self.state_dir is not None:
            raise ConfigError(
                "--state-dir is for the SQLite secret target and the domain target: on"
                " PostgreSQL the run's store is its schema (--keep-schema keeps it)"
            )
        if not all(isinstance(n, int) and 1 <= n <= MAX_REPLICAS for n in self.replicas):
            raise ConfigError(f"each replica count must be between 1 and {MAX_REPLICAS}")
        if len(set(self.replicas)) != len(self.replicas):
            raise ConfigError("replica counts must differ from each other")
        if any(n > self.clients for n in self.replicas):
            raise ConfigError("more replicas than clients: some replicas would get no load")

    @property
    def end(self) -> float:
        """When the run ends, in seconds from its start."""
        return self.warmup + self.duration

    def as_dict(self) -> dict[str, object]:
        """The configuration as JSON-ready values (for the report)."""
        out = attrs.asdict(self)
        out["mix"] = dict(self.mix)
        out["connect"] = None if self.connect is None else f"{self.connect[0]}:{self.connect[1]}"
        if self.server_metrics is not None:
            out["server_metrics"] = f"{self.server_metrics[0]}:{self.server_metrics[1]}"
        out["postgres"] = None if self.postgres is None else redact(self.postgres)
        out["replicas"] = list(self.replicas)
        return out


def split(total: float, parts: int, index: int) -> float:
    """Part ``index`` of ``total`` split over ``parts`` (whole numbers stay whole)."""
    if isinstance(total, int):
        return total // parts + (1 if index < total % parts else 0)
    return total / parts


def intended_time(n: int, rate: float, ramp_up: float) -> float:
    """When send ``n`` (from 0) is due, in seconds from the start, at ``rate`` per second
    reached by a linear ramp over ``ramp_up`` seconds (the open model's schedule)."""
    if ramp_up <= 0:
        return n / rate
    ramp_sends = rate * ramp_up / 2  # sends due during the ramp: the triangle's area
    if n < ramp_sends:
        return math.sqrt(2 * ramp_up * n / rate)
    return ramp_up + (n - ramp_sends) / rate


def offered_between(start: float, end: float, rate: float, ramp_up: float) -> float:
    """How many sends the schedule offers over ``[start, end)`` seconds."""

    def cumulative(t: float) -> float:
        if t <= 0:
            return 0.0
        if ramp_up <= 0 or t >= ramp_up:
            return rate * (t - ramp_up / 2) if ramp_up > 0 else rate * t
        return rate * t * t / (2 * ramp_up)

    return cumulative(end) - cumulative(start)
