"""Servers the load-test tests control, in the test's own trio loop (plain TCP on
127.0.0.1), and a helper that runs ``run_load`` against one in a thread beside it."""

from __future__ import annotations

from typing import Any

import trio

from taonet.loadtest import LoadConfig, run_load


class ControlledEcho:
    """A plain TCP echo server that can stall once, answer every request late, die, or
    answer with other bytes than it was sent."""

    def __init__(
        self,
        *,
        stall_at: int | None = None,
        delay: float = 0.0,
        die_at: int | None = None,
        garble: bool = False,
    ) -> None:
        self.garble = garble
        self.stall_at = stall_at
        self.delay = delay
        self.die_at = die_at
        self.died = trio.Event()
        self.requests = 0
        self.resumed = trio.Event()
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    self.requests += 1
                    if self.requests == self.die_at:
                        self.died.set()  # serve() stops listening and drops everyone
                        await trio.sleep_forever()
                    if self.requests == self.stall_at:
                        await trio.sleep(0.2)  # the stall the generator must show
                        self.resumed.set()
                    elif self.stall_at is not None and self.requests > self.stall_at:
                        await self.resumed.wait()  # everyone waits while it stalls
                    if self.delay:
                        await trio.sleep(self.delay)  # a server slower than the rate
                    if self.garble:  # as many bytes back, not the same ones
                        data = bytes([data[0] ^ 1]) + data[1:]
                    await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.handle, listeners)
            task_status.started()
            await self.died.wait()
            nursery.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()


async def run_against(server: ControlledEcho, **options: Any) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        config = LoadConfig(connect=("127.0.0.1", server.port), tls=False, **options)
        report: dict[str, Any] = await trio.to_thread.run_sync(run_load, config)
        nursery.cancel_scope.cancel()
    return report


class SilentServer:
    """Accepts connections and reads, but never answers; counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.open += 1
        self.accepted += 1
        self.most_open = max(self.most_open, self.open)
        try:
            async with stream:
                while await stream.receive_some(65536):
                    pass
        except trio.BrokenResourceError:
            pass
        finally:
            self.open -= 1

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)


class ClosingServer:
    """Accepts each connection and closes it at once."""

    port = 0

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(trio.aclose_forcefully, listeners, task_status=task_status)
