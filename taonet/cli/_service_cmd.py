"""``taonet domain-service``: run a domain's certificate service."""

from __future__ import annotations

import argparse
from typing import Any

from taonet._errors import ConfigError
from taonet.cli._domain_cmd import add_domain_option, domain_dir
from taonet.cli._logging import configure_logging
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
    import trio

    from services.domain_service import DomainService

    directory = domain_dir(args)
    host, port = parse_listen(args.listen)
    configure_logging()
    password = get_password(args.password_file, prompt="Policy key password")
    service = DomainService.open(directory, password)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: service.serve(port, host=host, task_status=task_status)
            )
            bound = listeners[0].socket.getsockname()
            print(
                f"domain service for {service.domain.config.name!r} listening on "
                f"{bound[0]}:{bound[1]} as {service.principal}",
                flush=True,
            )

    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("domain service stopped")
    return 0
