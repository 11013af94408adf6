"""``taonet quote-service``: certify TPM quote keys for a domain.

It serves until SIGINT or SIGTERM and then stops in order (exit status 0), logging
``quote_service_started`` (address, domain, principal) and ``quote_service_stopped``,
and printing the same on standard output. The domain must list at least one TPM
manufacturer CA (``taonet domain policy --add-manufacturer-ca PEM``). A malformed
``--listen`` is a usage error (exit 2); an address it cannot listen on is one line
on stderr and exit status 1. See :mod:`taonet_services.quote_service` for what it
checks before it signs.
"""

from __future__ import annotations

import argparse
from typing import Any

from taonet import configure_logging
from taonet.cli._domain_cmd import add_domain_option, domain_dir
from taonet.cli._password import add_password_option, get_password
from taonet.cli._service_cmd import (
    add_listen_option,
    parse_listen,
    run_service,
    say_started,
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "quote-service",
        help="certify TPM 2.0 quote keys for a domain (EK certificate checked, reply "
        "wrapped for that TPM)",
    )
    add_domain_option(p)
    add_listen_option(p, 8125)
    add_password_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import structlog

    from taonet_services.quote_service import QuoteService

    log = structlog.get_logger(__name__)
    directory = domain_dir(args)
    host, port = parse_listen(args.listen)
    configure_logging()
    password = get_password(args.password_file, prompt="Policy key password")
    service = QuoteService.open(directory, password)

    async def started(listeners: Any, nursery: Any) -> None:
        addresses = say_started(log, "quote_service_started", listeners, directory, service)
        print(
            f"quote service for {service.domain.config.name!r} listening on "
            f"{', '.join(addresses)} as {service.principal} "
            f"({len(service.manufacturer_cas)} manufacturer CA(s))",
            flush=True,
        )

    return run_service(log, "quote_service", service, (host, port), started, listen=args.listen)
