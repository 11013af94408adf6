"""A lean TLS stream for Tao channels: ``ssl.SSLObject`` over memory BIOs on a trio stream.

trio's ``SSLStream`` is general (renegotiation, TLS 1.2, https-compatible EOFs) and
hands over one TLS record per ``receive_some`` after a trip through its retry
machinery. A Tao channel is TLS 1.3 only, so it needs much less: this stream
decrypts everything that one socket read brought in one call, and encrypts each
``send_all`` in one call. Semantics follow ``trio.abc.Stream`` (and are checked with
``trio.testing.check_two_way_stream``):

* one task at a time may send and one may receive (others get BusyResourceError);
  ciphertext goes to the transport under one lock, in order, whichever side
  produced it;
* an end of the transport without the peer's close_notify is a
  BrokenResourceError (a truncation attack looks like that); a close_notify is a
  clean end of stream (``b""``);
* any TLS error, or a send cut short by cancellation, breaks the stream for good;
* ``aclose`` sends close_notify when it can and always closes the transport.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Final

import trio

__all__ = ["TLSStream"]

#: How much ciphertext one socket read may bring, and plaintext one receive returns.
READ_SIZE: Final = 256 * 1024


class TLSStream(trio.abc.Stream):
    """TLS over a trio stream (see the module docstring)."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport: Final = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._write_lock = trio.StrictFIFOLock()
        self._handshake_lock = trio.Lock()
        self._sending = False
        self._receiving = False
        self._handshake_done = False
        self._closed = False
        self._broken: BaseException | None = None
        self._eof = False

    # -- state -------------------------------------------------------------------

    def getpeercert(self) -> bytes | None:
        """The peer's certificate (DER), once the handshake is done."""
        return self._tls.getpeercert(binary_form=True)

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this TLS stream is broken") from self._broken

    def _break(self, exc: BaseException) -> trio.BrokenResourceError:
        if self._broken is None:
            self._broken = exc
        error = trio.BrokenResourceError(f"TLS failed: {exc}")
        error.__cause__ = exc
        return error

    # -- moving ciphertext ----------------------------------------------------------

    async def _flush(self) -> None:
        """Send all pending ciphertext, in order, whoever produced it."""
        # Uncontended (the usual case), take the lock without a trip through the
        # scheduler: the transport's send_all is the checkpoint.
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._write_lock.acquire()
        try:
            data = self._outgoing.read()
            if not data:
                return
            try:
                await self.transport.send_all(data)
            except BaseException as exc:
                # Part of a record may be on the wire: nothing can follow it.
                if self._broken is None:
                    self._broken = exc
                raise
        finally:
            self._write_lock.release()

    async def _fill(self) -> None:
        """Read ciphertext from the transport into the TLS object."""
        try:
            data = await self.transport.receive_some(READ_SIZE)
        except trio.BrokenResourceError as exc:
            raise self._break(exc) from exc
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    # -- the handshake ----------------------------------------------------------------

    async def do_handshake(self, *, hold_last_flight: bool = False) -> None:
        """Run the TLS handshake (idempotent).

        With ``hold_last_flight`` what the handshake still has to send when it is done
        here (a TLS 1.3 client's Certificate and Finished) stays queued until the
        stream's first send, receive or close, so that data sent at once shares its
        write (and the peer gets both in one segment).
        """
        self._check_usable()
        if self._handshake_done:
            await trio.lowlevel.checkpoint()
            return
        # A sender and a receiver may both start the handshake: one runs it.
        async with self._handshake_lock:
            if not self._handshake_done:
                await self._run_handshake(hold_last_flight=hold_last_flight)

    async def _run_handshake(self, *, hold_last_flight: bool = False) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError as exc:
                await self._flush_quietly()  # let the peer see our alert
                raise self._break(exc) from exc
            break
        if hold_last_flight:
            await trio.lowlevel.checkpoint()
        else:
            await self._flush()
        self._handshake_done = True

    def queue(self, data: bytes) -> None:
        """Encrypt ``data`` to go out with the next send (or receive, or close), not now."""
        self._check_usable()
        if not self._handshake_done:
            raise RuntimeError("queue() before the handshake")
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise self._break(exc) from exc

    def data_arrived(self) -> bool:
        """Whether bytes from the peer wait here, not yet decrypted or not yet read."""
        return self._incoming.pending > 0 or self._tls.pending() > 0

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What has already arrived, decrypted, up to ``max_bytes``, without waiting or
        flushing what is queued: None if nothing has (``b""``: the peer closed). Not a
        checkpoint; the caller makes one."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._check_usable()
        if not self._handshake_done:
            return None
        if self._eof:
            return b""
        data = self._read_available(max_bytes)
        if data or self._eof:
            return data
        return None

    async def _flush_quietly(self) -> None:
        try:
            with trio.move_on_after(1):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    # -- trio.abc.Stream ----------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check_usable()
            if not self._handshake_done:
                await self.do_handshake()
            if not data:
                await trio.lowlevel.checkpoint()
                return
            try:
                self._tls.write(data)
            except ssl.SSLError as exc:
                raise self._break(exc) from exc
            await self._flush()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check_usable()
            await self.transport.wait_send_all_might_not_block()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            self._check_usable()
            if not self._handshake_done:
                await self.do_handshake()
            await trio.lowlevel.checkpoint_if_cancelled()
            limit = max_bytes or READ_SIZE
            while True:
                if self._eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                data = self._read_available(limit)
                if data:
                    if self._outgoing.pending:
                        with trio.CancelScope(shield=True):
                            await self._flush()  # e.g. a KeyUpdate's answer
                    else:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if self._eof:
                    continue
                if self._outgoing.pending:
                    await self._flush()
                await self._fill()
        finally:
            self._receiving = False

    def _read_available(self, limit: int) -> bytes:
        """Decrypt what has arrived, up to ``limit`` bytes, without waiting."""
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            try:
                chunk = self._tls.read(limit - size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            except ssl.SSLError as exc:
                if chunks:  # hand over what decrypted cleanly; fail on the next read
                    self._broken = exc
                    break
                raise self._break(exc) from exc
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
            size += len(chunk)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._handshake_done and self._broken is None:
                # We do not wait for the peer's close_notify.
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
                    self._tls.unwrap()
                try:
                    async with self._write_lock:
                        data = self._outgoing.read()
                        if data:
                            await self.transport.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                    pass
        finally:
            await self.transport.aclose()
