"""A hosted service split over modules and a package: the README's example.

The Linux Tao host measures this whole directory (every file, into one name), copies
it, and runs this file with the Python interpreter it offers, isolated, in the root
of its copy. Started with ``--listen HOST:PORT`` it then answers each TCP
connection with a greeting that names it; without, it exits once it has shown who
it is. Run it on a host with::

    taonet run --wait examples/hosted_service
"""

from __future__ import annotations

import argparse
import functools
import sys

import sealing
import trio
from hello import replies

from taonet import TaoError
from taonet.hosts import parent


def endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hosted_service", description=__doc__)
    parser.add_argument("--listen", metavar="HOST:PORT", type=endpoint)
    args = parser.parse_args(argv)
    async with parent() as tao:  # the Tao of the host that started this program
        name = await tao.get_tao_name()
        print(f"hosted_service: my name is {name}", flush=True)
        # Relative paths name files of the measured copy: it runs in its root.
        motd = await trio.Path("motd.txt").read_text()
        print(f"hosted_service: {motd.strip()}", flush=True)
        kept = await sealing.round_trip(tao, replies.greeting("sealed"))
        print(f"hosted_service: {kept}", flush=True)
    if args.listen is None:
        return 0
    host, port = args.listen

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(replies.greeting(str(name)).encode() + b"\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, answer, port, host=host))
        address = listeners[0].socket.getsockname()
        print(f"hosted_service: listening on {host}:{address[1]}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(trio.run(main, sys.argv[1:]))
    except TaoError as exc:
        sys.exit(f"hosted_service: {exc}")
