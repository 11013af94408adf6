"""``taonet secret-server``: run a domain's secret server (a Tao program itself).

Run as a hosted program of a Tao host (``taonet.hosts.parent()``), or with
``--soft-host DIR`` on a soft Tao host's key, as ``taonet demo`` runs its programs
(the server is then named by the hash of its program module). It provisions its
identity through the domain service, gets its master key (sealed by its Tao), and
serves until SIGINT or SIGTERM (exit status 0). It prints, once it serves, one line
``secret server listening on HOST:PORT as PRINCIPAL`` and logs
``secret_server_started``; as it stops, ``secret server stopped (SIGNAL)``.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path
from typing import Any

from taonet import configure_logging
from taonet.cli._domain_cmd import add_domain_option, domain_dir
from taonet.cli._failures import UsageError
from taonet.cli._service_cmd import (
    add_metrics_options,
    address_of,
    metrics_address,
    parse_listen,
    say_stopped,
    serve_until_signal,
    start_metrics_if_asked,
)

#: Set by a Tao host for its hosted programs (see taonet.hosts.parent).
HOST_CHANNEL_VARIABLE = "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE"

_EXAMPLES = """Example:
  taonet secret-server --domain ./domain --state ./secret-state --listen 127.0.0.1:8125
  taonet secret-server --domain ./domain --state ./state --db postgresql://secrets@db/secrets
  taonet secret-server --domain ./domain --state ./state --soft-host ./host --password-file pw
  taonet secret-server --domain ./d --state ./s2 --db postgresql://db/s --replica-of h1:8125"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "secret-server",
        help="serve the domain's secrets and keys over Tao channels",
        description=textwrap.fill(
            "Run the secret server: a Tao program that keeps keys and secrets encrypted"
            " under a master key sealed by its Tao, and hands them to programs the"
            " domain's guard allows.",
            79,
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_domain_option(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8125",
        help="address to listen on (default 127.0.0.1:8125; port 0 picks a free one)",
    )
    p.add_argument(
        "--state",
        metavar="DIR",
        type=Path,
        required=True,
        help="directory for the server's sealed identity and cached CRL",
    )
    p.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="database: sqlite:///PATH or postgresql://... (default: DOMAIN/secrets.db)",
    )
    p.add_argument(
        "--domain-service",
        metavar="HOST:PORT",
        default="127.0.0.1:8124",
        help="the domain service to provision from and take the CRL from (default 127.0.0.1:8124)",
    )
    p.add_argument(
        "--soft-host",
        metavar="DIR",
        type=Path,
        default=None,
        help="run on this soft Tao host's key (its password asked, or --password-file)",
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        type=Path,
        default=None,
        help="read the soft host's password from FILE (first line)",
    )
    p.add_argument(
        "--replica-of",
        metavar="HOST:PORT",
        default=None,
        help="a running replica (same database) to get the master key from over a Tao channel,"
        " when this server (on another host) holds no copy of it yet; the guard must let both"
        ' hold it: Authorized(P, "Own", "/taonet.secret-server/master")',
    )
    add_metrics_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop and exit 0."""
    import contextlib

    import structlog
    import trio

    from taonet.cli._password import get_password
    from taonet.domain import Domain
    from taonet.hosts import SoftHost, Tao, parent
    from taonet_services.secret_server import program_name, run_secret_server

    log = structlog.get_logger(__name__)
    directory = domain_dir(args)
    listen = parse_listen(args.listen)
    try:
        domain_service = parse_listen(args.domain_service)
    except UsageError as exc:  # it names --listen: say which option it was
        raise UsageError(str(exc).replace("--listen", "--domain-service", 1)) from None
    if args.soft_host is None and not os.environ.get(HOST_CHANNEL_VARIABLE):
        raise UsageError(
            "not started by a Tao host: run it as a hosted program, or give --soft-host DIR"
            " to run on a soft host's key"
        )
    replica_of = None if args.replica_of is None else parse_listen(args.replica_of)
    metrics_at = metrics_address(args)
    configure_logging()
    metrics = None
    if metrics_at is not None:
        from taonet_services.metrics import ServiceMetrics

        metrics = ServiceMetrics("secret_server")  # ConfigError without prometheus-client
    domain = Domain.load(directory)
    soft: SoftHost | None = None
    if args.soft_host is not None:
        password = get_password(args.password_file, prompt="Soft host password")
        soft = SoftHost.load(args.soft_host, password)

    async def started(running: Any, nursery: Any) -> None:
        address = address_of(running.listeners[0].socket.getsockname())
        principal = running.server.identity.certificate.principal
        log.info(
            "secret_server_started",
            listen=address,
            domain=str(directory),
            principal=str(principal),
        )
        print(f"secret server listening on {address} as {principal}", flush=True)
        await start_metrics_if_asked(nursery, metrics, metrics_at, args)

    async def main() -> str | None:
        async with contextlib.AsyncExitStack() as stack:
            tao: Tao
            if soft is not None:
                tao = soft.tao_for(soft.name.extend(program_name()))
            else:
                tao = await stack.enter_async_context(parent())
            return await serve_until_signal(
                lambda task_status: run_secret_server(
                    tao,
                    domain=domain,
                    state_dir=args.state,
                    domain_service=domain_service,
                    listen=listen,
                    db_url=args.db,
                    replica_of=replica_of,
                    metrics=metrics,
                    task_status=task_status,
                ),
                started,
                listen=args.listen,
            )

    say_stopped(log, "secret_server_stopped", "secret server", trio.run(main))
    return 0
