"""``async for event in store.watch(prefix)``: change events from the secret server.

The server answers a ``SecretService.Watch`` call as soon as an event after the
cursor exists (a long poll, up to tens of seconds; an empty answer otherwise) and
says where to ask from next; this iterator asks again at once, so events arrive
without polling. Events are those of names under ``prefix`` (segment-wise) that the
caller may Read: ``created``, ``written``, ``rotated`` (a new epoch) and
``deleted``, in the order of the server's log.

``cursor`` (default 0: from now) resumes after an event's ``seq``. When the channel
breaks (the server restarted, a network failure), the iterator opens a new one and
resumes at its cursor, so no event is lost or repeated; it gives up (raising the
last error) after :data:`MAX_RETRIES` failures in a row, waiting 0.1 s, 0.2 s, ...
(at most 5 s) between them. A refusal (typed error) is raised at once.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final

import trio

from taonet._errors import ProtocolError
from taonet.secrets._protocol import WatchBatch, WatchEvent, WatchRequest

if TYPE_CHECKING:
    from taonet.secrets._client import SecretStore

__all__ = ["MAX_RETRIES", "Watch", "watch"]

#: Failures of the channel in a row before the iterator gives up.
MAX_RETRIES: Final = 8


class Watch:
    """The async iterator of :meth:`SecretStore.watch` (see the module docstring).

    A plain object, not an async generator: a loop may stop iterating at any point
    (``break``, an exception) with nothing left to close; events already received
    and not yet taken are kept for the next ``__anext__``.
    """

    def __init__(self, store: SecretStore, prefix: str = "/", *, cursor: int = 0) -> None:
        WatchRequest(prefix, cursor)  # ValueError now for a bad prefix or cursor
        self.prefix: Final = prefix
        #: The seq of the last event handed out (or where the server said to go on).
        self.cursor = cursor
        self._store = store
        self._ready: collections.deque[WatchEvent] = collections.deque()
        self._next_cursor = cursor  # the server's cursor after the events in _ready

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        failures = 0
        while not self._ready:
            try:
                batch = await self._store.call(WatchRequest(self.prefix, self.cursor))
            except ProtocolError:
                failures += 1
                if failures > MAX_RETRIES:
                    raise
                await trio.sleep(min(5.0, 0.1 * 2 ** (failures - 1)))
                continue
            failures = 0
            if not isinstance(batch, WatchBatch):
                raise ProtocolError(f"the secret server answered Watch with {type(batch).__name__}")
            last = self.cursor
            for event in batch.events:
                if event.seq <= last:
                    raise ProtocolError("the secret server sent an event out of order")
                last = event.seq
            if batch.cursor < last:
                raise ProtocolError("the secret server moved the watch cursor back")
            self._ready.extend(batch.events)
            self._next_cursor = batch.cursor
            if not batch.events:
                self.cursor = batch.cursor
        event = self._ready.popleft()
        self.cursor = event.seq if self._ready else self._next_cursor
        return event


def watch(store: SecretStore, prefix: str = "/", *, cursor: int = 0) -> Watch:
    """Events under ``prefix`` after ``cursor`` (0: from now), for as long as iterated."""
    return Watch(store, prefix, cursor=cursor)
