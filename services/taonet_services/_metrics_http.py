"""serve_metrics: ``GET /metrics`` over plain HTTP, served from Trio within fixed bounds.

The exposition is unauthenticated and unencrypted (as Prometheus scrapes), so:

* it listens on a loopback address unless the caller says ``public=True`` (the CLI's
  ``--metrics-public``): the figures (which operations are asked, how often, how
  fast, refusals) are about the service's users, and the endpoint answers anyone;
* it holds at most ``max_connections`` connections (default 16). One accepted at the
  cap takes the place of the oldest connection that has not sent its whole request
  head yet (closed unanswered), or is closed at once, unanswered, when every held
  connection has sent its request: a client that opens many idle connections cannot
  make the server hold more, nor keep a scraper out (a scraper sends its request as
  soon as it connects; the idle ones are the first to go);
* a request head is at most ``max_request`` bytes (default 8 KiB): one longer is
  answered ``431`` and the connection closed, having read no more than that;
* the request head must arrive within ``head_timeout`` seconds (default 2), and each
  connection has ``connection_timeout`` seconds (default 5) in all, to send its request
  and take the answer; one slower (bytes one at a time, or an answer never read) is
  closed;
* the exposition is made at most once per ``min_interval`` seconds (default 1): the
  scrapes within it get the same bytes, so a client that scrapes in a loop costs the
  service one exposition (about a millisecond) a second, not one per request;
* one request per connection (``Connection: close``); only ``GET`` and ``HEAD`` of
  ``/metrics`` are served (``404`` for another path, ``405`` for another method,
  ``400`` for a request line that is not HTTP/1.x); a request body is never read.

It is written here on Trio rather than with prometheus-client's thread-based
``start_http_server`` so that these limits are the service's own, and no thread runs
beside the event loop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Final

import structlog
import trio

from taonet import ConfigError

__all__ = [
    "DEFAULT_HEAD_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_TIMEOUT",
    "is_loopback",
    "serve_metrics",
]

log = structlog.get_logger(__name__)

#: Connections held at once.
DEFAULT_MAX_CONNECTIONS: Final = 16
#: Bytes of a request head (request line and headers).
DEFAULT_MAX_REQUEST: Final = 8 * 1024
#: Seconds one connection may take in all.
DEFAULT_TIMEOUT: Final = 5.0
#: Seconds a connection may take to send its request head.
DEFAULT_HEAD_TIMEOUT: Final = 2.0
#: Seconds an exposition is served again before a new one is made.
DEFAULT_MIN_INTERVAL: Final = 1.0
#: The exposition's content type (prometheus_client.CONTENT_TYPE_LATEST, text 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Refusals of connections over the cap, logged one per burst.
_QUIET_AFTER: Final = 10.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _response(status: str, body: bytes, *, content_type: str, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii") + (b"" if head else body)


def _plain(status: str) -> bytes:
    return _response(status, status.encode() + b"\n", content_type="text/plain; charset=utf-8")


async def _read_head(stream: trio.abc.ReceiveStream, limit: int) -> bytes | None:
    """The request head (up to its blank line); None if the client left first; b""
    if it is longer than ``limit`` (no more than ``limit`` bytes are read)."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) >= limit:
            return b""
        chunk = await stream.receive_some(limit - len(buffer))
        if not chunk:
            return None
        buffer += chunk


def _answer(head: bytes, exposition: Callable[[], bytes]) -> bytes:
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _plain("400 Bad Request")
    method, target = parts[0], parts[1]
    path = target.split(b"?", 1)[0]
    if path != b"/metrics":
        return _plain("404 Not Found")
    if method not in (b"GET", b"HEAD"):
        return _plain("405 Method Not Allowed")
    return _response("200 OK", exposition(), content_type=CONTENT_TYPE, head=method == b"HEAD")


async def serve_metrics(
    exposition: Callable[[], bytes],
    port: int,
    *,
    host: str = "127.0.0.1",
    public: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_request: int = DEFAULT_MAX_REQUEST,
    connection_timeout: float = DEFAULT_TIMEOUT,
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    min_interval: float = DEFAULT_MIN_INTERVAL,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``exposition()`` (e.g. :meth:`ServiceMetrics.exposition`) as ``GET /metrics``
    on ``host:port`` until cancelled, within the module docstring's bounds (Trio's start
    protocol: ``task_status`` gets the listeners; port 0 picks a free one).

    ConfigError for a ``host`` that is not a loopback address unless ``public``;
    ValueError for a bound that is not positive (``min_interval`` may be 0: a new
    exposition for every request).
    """
    if not public and not is_loopback(host):
        raise ConfigError(
            f"metrics on {host[:100]!r}: not a loopback address; the metrics endpoint is"
            " plain HTTP and answers anyone (serve it on 127.0.0.1 or ::1, or say it is"
            " meant to be public)"
        )
    for name, value in (
        ("max_connections", max_connections),
        ("max_request", max_request),
        ("connection_timeout", connection_timeout),
        ("head_timeout", head_timeout),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value}")
    if not min_interval >= 0:
        raise ValueError(f"min_interval must be >= 0, not {min_interval}")
    held = 0
    # The connections still reading their request head, oldest first: the ones a new
    # connection at the cap takes the place of.
    waiting: dict[trio.SocketStream, trio.CancelScope] = {}
    made: tuple[float, bytes] | None = None  # when the last exposition was made, and it

    def latest() -> bytes:
        nonlocal made
        now = trio.current_time()
        if made is None or now - made[0] >= min_interval:
            made = (now, exposition())
        return made[1]

    refused = 0
    last_refusal = -_QUIET_AFTER

    async def serve_one(tcp: trio.SocketStream) -> None:
        nonlocal held
        try:
            with trio.move_on_after(connection_timeout) as scope:
                with trio.move_on_after(head_timeout) as reading:
                    waiting[tcp] = reading
                    try:
                        head = await _read_head(tcp, max_request)
                    finally:
                        waiting.pop(tcp, None)
                if reading.cancelled_caught or head is None:
                    return
                if not head:
                    answer = _plain("431 Request Header Fields Too Large")
                else:
                    answer = _answer(head, latest)
                await tcp.send_all(answer)
            if scope.cancelled_caught:
                log.info("metrics_client_too_slow", timeout=connection_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(tcp)
            held -= 1

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        nonlocal refused, last_refusal, held
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:  # out of descriptors: wait a little, as a scrape can
                log.warning("metrics_accept_failing", error=str(exc))
                await trio.sleep(0.1)
                continue
            if held >= max_connections:
                refused += 1
                now = trio.current_time()
                if now - last_refusal >= _QUIET_AFTER:
                    log.warning(
                        "metrics_connection_limit_reached", limit=max_connections, events=refused
                    )
                    refused = 0
                last_refusal = now
                if not waiting:
                    # Every held connection sent its request: this one is closed
                    # unanswered (a scraper tries again next interval).
                    await trio.aclose_forcefully(tcp)
                    continue
                # The oldest connection still without its request goes, closed by its
                # own task at its next turn (it leaves ``waiting`` now, so none is
                # made to go twice), and this one takes its place.
                waiting.pop(next(iter(waiting))).cancel()
            held += 1
            nursery.start_soon(serve_one, tcp)

    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery)
            task_status.started(listeners)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
