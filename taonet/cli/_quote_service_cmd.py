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
import signal
from typing import Any

from taonet import ConfigError, configure_logging
from taonet.cli._domain_cmd import add_domain_option, domain_dir
from taonet.cli._failures import describe, leaves
from taonet.cli._password import add_password_option, get_password
from taonet.cli._service_cmd import parse_listen


def register(sub: Any) -> None:
    p = sub.add_parser(
        "quote-service",
        help="certify TPM 2.0 quote keys for a domain (EK certificate checked, reply "
        "wrapped for that TPM)",
    )
    add_domain_option(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8125",
        help="address to listen on (default 127.0.0.1:8125; IPv6 in brackets: [::1]:8125;"
        " port 0 picks a free one)",
    )
    add_password_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import structlog
    import trio

    from taonet_services.quote_service import QuoteService

    log = structlog.get_logger(__name__)
    directory = domain_dir(args)
    host, port = parse_listen(args.listen)
    configure_logging()
    password = get_password(args.password_file, prompt="Policy key password")
    service = QuoteService.open(directory, password)
    stopped_by: list[str] = []

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                try:
                    listeners = await nursery.start(
                        lambda task_status: service.serve(port, host=host, task_status=task_status)
                    )
                except (OSError, BaseExceptionGroup) as exc:
                    found = leaves(exc)
                    if not all(isinstance(leaf, OSError) for leaf in found):
                        raise
                    raise ConfigError(
                        f"cannot listen on {args.listen}: {describe(found[0])}"
                    ) from None
                addresses = [_address(listener.socket.getsockname()) for listener in listeners]
                log.info(
                    "quote_service_started",
                    listen=addresses,
                    domain=str(directory),
                    principal=str(service.principal),
                )
                print(
                    f"quote service for {service.domain.config.name!r} listening on "
                    f"{', '.join(addresses)} as {service.principal} "
                    f"({len(service.manufacturer_cas)} manufacturer CA(s))",
                    flush=True,
                )
                async for signum in signals:
                    stopped_by.append(signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

    with service:  # closes the audit log however main ends
        trio.run(main)
    log.info("quote_service_stopped", signal=stopped_by[0] if stopped_by else None)
    print(f"quote service stopped ({', '.join(stopped_by) or 'done'})", flush=True)
    return 0


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
