"""``taonet domain-service``: run a domain's certificate service.

It serves until SIGINT or SIGTERM and then stops in order (exit status 0). It logs
``domain_service_started`` (the address it listens on, the domain, its principal)
once it serves and ``domain_service_stopped`` (the signal) as it stops, and prints
the same facts on standard output. A malformed ``--listen`` is a usage error
(exit 2); an address it cannot listen on is one line on stderr and exit status 1.

``--metrics HOST:PORT`` (here and for ``taonet secret-server``) also serves the
service's Prometheus metrics as ``GET /metrics`` on that address (see
:mod:`taonet_services.metrics`; needs ``pip install 'taonet[metrics]'``) and prints
``metrics on http://HOST:PORT/metrics``. The endpoint is plain HTTP that answers
anyone, so the address must be a loopback one unless ``--metrics-public`` says
otherwise (a usage error, exit 2).
"""

from __future__ import annotations

import argparse
import functools
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from taonet import ConfigError, configure_logging
from taonet.cli._domain_cmd import add_domain_option, domain_dir
from taonet.cli._failures import UsageError, describe, leaves
from taonet.cli._password import add_password_option, get_password


def register(sub: Any) -> None:
    p = sub.add_parser(
        "domain-service", help="serve program certificates for a domain (over Tao channels)"
    )
    add_domain_option(p)
    add_listen_option(p, 8124)
    add_password_option(p)
    add_metrics_options(p)
    p.set_defaults(func=_run)


def add_metrics_options(p: argparse.ArgumentParser) -> None:
    """``--metrics HOST:PORT`` and ``--metrics-public`` (see the module docstring)."""
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="also serve Prometheus metrics at http://HOST:PORT/metrics (a loopback address;"
        " port 0 picks a free one; needs taonet[metrics])",
    )
    p.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow --metrics on an address other than loopback (the endpoint is plain HTTP"
        " and answers anyone who reaches it)",
    )


def metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """The ``--metrics`` address (None without it); UsageError for a malformed one, or
    one off loopback without ``--metrics-public``."""
    if args.metrics is None:
        if args.metrics_public:
            raise UsageError("--metrics-public needs --metrics HOST:PORT")
        return None
    from taonet_services.metrics import is_loopback

    try:
        host, port = parse_listen(args.metrics)
    except UsageError as exc:  # it names --listen: say which option it was
        raise UsageError(str(exc).replace("--listen", "--metrics", 1)) from None
    if not args.metrics_public and not is_loopback(host):
        raise UsageError(
            f"--metrics {args.metrics[:100]!r}: not a loopback address; the metrics endpoint"
            " is plain HTTP and answers anyone (use 127.0.0.1 or [::1], or add"
            " --metrics-public)"
        )
    return host, port


async def start_metrics(
    nursery: Any,
    exposition: Callable[[], bytes],
    address: tuple[str, int],
    *,
    public: bool,
    option: str,
) -> str:
    """Serve ``exposition`` on ``address`` in ``nursery``, and say so (a log line and
    ``metrics on URL`` on standard output); the URL it is served at. ConfigError (one
    line) for an address it cannot listen on."""
    import structlog

    from taonet_services.metrics import serve_metrics

    host, port = address
    try:
        listeners = await nursery.start(
            lambda task_status: serve_metrics(
                exposition, port, host=host, public=public, task_status=task_status
            )
        )
    except (OSError, BaseExceptionGroup) as exc:
        found = leaves(exc)
        if not all(isinstance(leaf, OSError) for leaf in found):
            raise
        raise ConfigError(f"cannot listen on {option}: {describe(found[0])}") from None
    url = f"http://{address_of(listeners[0].socket.getsockname())}/metrics"
    structlog.get_logger(__name__).info("metrics_listening", url=url)
    print(f"metrics on {url}", flush=True)
    return url


async def start_metrics_if_asked(
    nursery: Any, metrics: Any, address: tuple[str, int] | None, args: argparse.Namespace
) -> None:
    """:func:`start_metrics` for ``metrics`` (a ServiceMetrics) on the ``--metrics``
    address, when the command was given one (``address`` not None)."""
    if metrics is not None and address is not None:
        await start_metrics(
            nursery,
            metrics.exposition,
            address,
            public=args.metrics_public,
            option=f"--metrics {args.metrics}",
        )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (127.0.0.1); UsageError saying what is wrong."""
    shown = repr(text[:100])
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise UsageError(f"--listen {shown}: an IPv6 address is written [ADDRESS]:PORT")
        host, port = address, rest[1:]
        if not host:
            raise UsageError(f"--listen {shown}: the brackets hold no address")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise UsageError(f"--listen wants HOST:PORT, got {shown} (no port)")
        if ":" in host:
            raise UsageError(f"--listen {shown}: write an IPv6 address in brackets, as [::1]:8124")
    if not port.isascii() or not port.isdigit():
        raise UsageError(f"--listen {shown}: the port {port[:20]!r} is not a number")
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {shown}: port {int(port)} is out of range (0 to 65535)")
    return host or "127.0.0.1", int(port)


def add_listen_option(p: argparse.ArgumentParser, port: int) -> None:
    """``--listen HOST:PORT`` (default ``127.0.0.1:PORT``), as a service command takes it."""
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=f"127.0.0.1:{port}",
        help=f"address to listen on (default 127.0.0.1:{port}; IPv6 in brackets: [::1]:{port};"
        " port 0 picks a free one)",
    )


async def serve_until_signal(
    serve: Callable[..., Awaitable[Any]],
    started: Callable[[Any, Any], Awaitable[None]],
    *,
    listen: str,
) -> str | None:
    """Start ``serve`` (called with ``task_status``) in a nursery, await ``started(value,
    nursery)`` with what it started with, then serve until SIGINT or SIGTERM and cancel
    it; the name of the signal that stopped it.

    An address it cannot listen on (in use, not this machine's, unknown name) is a
    ConfigError naming ``listen``, said in one line like every other error.
    """
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                value = await nursery.start(serve)
            except (OSError, BaseExceptionGroup) as exc:
                found = leaves(exc)
                if not all(isinstance(leaf, OSError) for leaf in found):
                    raise
                raise ConfigError(f"cannot listen on {listen}: {describe(found[0])}") from None
            await started(value, nursery)
            stopped_by = None
            async for signum in signals:
                stopped_by = signal.Signals(signum).name
                break
            nursery.cancel_scope.cancel()
    return stopped_by


def say_started(log: Any, event: str, listeners: Any, directory: Path, service: Any) -> list[str]:
    """Log ``event`` with the addresses ``listeners`` listen on, the domain directory
    and the service's principal to ``log``; the addresses."""
    addresses = [address_of(listener.socket.getsockname()) for listener in listeners]
    log.info(event, listen=addresses, domain=str(directory), principal=str(service.principal))
    return addresses


def say_stopped(log: Any, event: str, what: str, stopped_by: str | None) -> None:
    """Log ``event`` with the signal to ``log`` and print ``WHAT stopped (SIGNAL)``."""
    log.info(event, signal=stopped_by)
    print(f"{what} stopped ({stopped_by or 'done'})", flush=True)


def _run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop in order and exit 0."""
    import structlog

    from taonet_services.domain_service import DomainService

    log = structlog.get_logger(__name__)

    directory = domain_dir(args)
    host, port = parse_listen(args.listen)
    metrics_at = metrics_address(args)
    configure_logging()
    metrics = None
    if metrics_at is not None:
        from taonet_services.metrics import ServiceMetrics

        metrics = ServiceMetrics("domain_service")  # ConfigError without prometheus-client
    password = get_password(args.password_file, prompt="Policy key password")
    service = DomainService.open(directory, password, metrics=metrics)

    async def started(listeners: Any, nursery: Any) -> None:
        addresses = say_started(log, "domain_service_started", listeners, directory, service)
        print(
            f"domain service for {service.domain.config.name!r} listening on "
            f"{', '.join(addresses)} as {service.principal}",
            flush=True,
        )
        await start_metrics_if_asked(nursery, metrics, metrics_at, args)

    return run_service(log, "domain_service", service, (host, port), started, listen=args.listen)


def run_service(
    log: Any,
    name: str,
    service: Any,
    address: tuple[str, int],
    started: Callable[[Any, Any], Awaitable[None]],
    *,
    listen: str,
) -> int:
    """Serve ``service`` (a domain directory's service: a context manager with
    ``serve(port, host=, task_status=)``) on ``address`` through
    :func:`serve_until_signal`, close it, log ``NAME_stopped`` and print that it
    stopped (``name`` with spaces); exit status 0."""
    import trio

    host, port = address
    with service:  # closes the audit log however it ends
        stopped_by = trio.run(
            functools.partial(
                serve_until_signal,
                lambda task_status: service.serve(port, host=host, task_status=task_status),
                started,
                listen=listen,
            )
        )
    say_stopped(log, f"{name}_stopped", name.replace("_", " "), stopped_by)
    return 0


def address_of(sockname: Any) -> str:
    """``host:port``, or ``[host]:port`` for IPv6, of a bound socket."""
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
