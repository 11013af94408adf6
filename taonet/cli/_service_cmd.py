"""``taonet domain-service``: run a domain's certificate service.

It serves until SIGINT or SIGTERM and then stops in order (exit status 0); an
address it cannot listen on is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from taonet import ConfigError, configure_logging
from taonet.cli._domain_cmd import add_domain_option, domain_dir
from taonet.cli._failures import describe, leaves
from taonet.cli._password import add_password_option, get_password


def register(sub: Any) -> None:
    p = sub.add_parser(
        "domain-service", help="serve program certificates for a domain (over Tao channels)"
    )
    add_domain_option(p)
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8124",
        help="address to listen on (default 127.0.0.1:8124)",
    )
    add_password_option(p)
    p.set_defaults(func=_run)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM, then stop in order and exit 0.

    An address that cannot be listened on (in use, not this machine's, unknown
    name) is a ConfigError, said in one line like every other error.
    """
    import trio

    from taonet_services.domain_service import DomainService

    directory = domain_dir(args)
    host, port = parse_listen(args.listen)
    configure_logging()
    password = get_password(args.password_file, prompt="Policy key password")
    service = DomainService.open(directory, password)
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
                bound = listeners[0].socket.getsockname()
                print(
                    f"domain service for {service.domain.config.name!r} listening on "
                    f"{bound[0]}:{bound[1]} as {service.principal}",
                    flush=True,
                )
                async for signum in signals:
                    stopped_by.append(signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

    trio.run(main)
    print(f"domain service stopped ({', '.join(stopped_by) or 'done'})", flush=True)
    return 0
