"""Bulk TLS on protected data connections: OpenSSL on the socket, in a worker thread.

The data connection's handshake and its binding check run on the reactor exactly as
before (Twisted's memory-BIO TLS layer, the session's own Context, `DataTLS.check`).
Only then, with the reactor no longer reading the socket, the established `SSL` object
is moved onto the socket (`SSL_set_fd`: the session, keys and sequence numbers stay
where they are) and a pool thread moves the file with large `SSL_write` / `SSL_read`
calls; cffi releases the GIL around them. When the thread is done the `SSL` object gets
fresh memory BIOs back and Twisted's TLS layer finishes the connection as usual
(close_notify, TCP close), so ABOR, the watchdog, the 426 rule and the TLS 1.3 ticket
hold on uploads (`data.TicketGate`) behave as on the reactor path.

The private OpenSSL calls are `tls/membio.py` (the BIOs) and the first functions of this
module (SSL_read and SSL_write on the socket).
"""

from __future__ import annotations

import os
import select
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from securetransport.replies import Reply
from securetransport.tls.membio import bind_to_socket, pending_in_memory_bios, unbind_from_socket
from securetransport.vfs import IReadHandle, IUpload

log = Logger(namespace="securetransport.ftp.tls_pump")

CHUNK = 1 << 20  # bytes per SSL_write call and per file read; per upload hand-over
POLL_SECONDS = 0.2  # how often a waiting thread looks at its stop flag
UPLOADS_IN_FLIGHT = 3  # upload chunks handed to the reactor and not yet written
UPLOAD_LINGER = 0.02  # wait this long for more before handing over a partial chunk
DRAIN_POLL = 0.002  # seconds between looks at Twisted's send buffer before a hand-off


# ------------------------------------------------------------------ private OpenSSL calls


class _Closed(Exception):
    """The peer sent close_notify."""


class _Broken(Exception):
    """The connection failed (reset, EOF without close_notify, a TLS error)."""


def _ssl_io(conn: SSL.Connection, write: bool, buffer: Any, start: int, length: int) -> int:
    """One SSL_write or SSL_read of buffer[start:start+length] on a socket-bound `conn`.

    Returns the bytes moved, 0 for "would block", -1 for "would block the other way"
    (a read that must write or the reverse); raises `_Closed` or `_Broken`.
    """
    ssl = conn._ssl
    pointer = _ffi.from_buffer(buffer) + start
    result = _lib.SSL_write(ssl, pointer, length) if write else _lib.SSL_read(ssl, pointer, length)
    if result > 0:
        return int(result)
    return _ssl_error(ssl, result, write)


def _ssl_error(ssl: Any, result: int, write: bool) -> int:
    error = _lib.SSL_get_error(ssl, result)
    if error == (_lib.SSL_ERROR_WANT_WRITE if write else _lib.SSL_ERROR_WANT_READ):
        return 0
    if error in (_lib.SSL_ERROR_WANT_READ, _lib.SSL_ERROR_WANT_WRITE):
        return -1
    _lib.ERR_clear_error()
    if error == _lib.SSL_ERROR_ZERO_RETURN:
        raise _Closed()
    raise _Broken(f"TLS error {error}")


def _ssl_reader(conn: SSL.Connection) -> Callable[[Any, int, int], int]:
    """`read(base, start, length)`: `_ssl_io` for SSL_read with less Python per record
    (one call per 16 KiB record); `base` is `_buffer_pointer(buffer)`."""
    ssl, ssl_read = conn._ssl, _lib.SSL_read

    def read(base: Any, start: int, length: int) -> int:
        result = ssl_read(ssl, base + start, length)
        return int(result) if result > 0 else _ssl_error(ssl, result, False)

    return read


def _buffer_pointer(buffer: bytearray) -> Any:
    """A C pointer to `buffer` (valid while `buffer` lives and is not resized)."""
    return _ffi.from_buffer(buffer)


# ------------------------------------------------------------------ the hand-off


def real_connection(handle: Any) -> SSL.Connection | None:
    """The `SSL.Connection` behind Twisted's TLS handle (a `RoutedConnection` forwards)."""
    real = getattr(handle, "connection", handle)
    return real if isinstance(real, SSL.Connection) else None


def _unsent(tcp: Any) -> int:
    """Bytes Twisted's TCP transport still has to write (private attributes, read only)."""
    return (
        len(getattr(tcp, "dataBuffer", b""))
        - int(getattr(tcp, "offset", 0))
        + int(getattr(tcp, "_tempDataLen", 0))
    )


def _tls_layer_idle(tls: Any) -> bool:
    """True when Twisted's TLS layer has nothing queued and is not closing."""
    return (
        not getattr(tls, "disconnecting", True)
        and not getattr(tls, "_lostTLSConnection", True)
        and not getattr(tls, "_appSendBuffer", True)
        and getattr(tls, "_producer", None) is None
        and getattr(tls, "_handshakeDone", False)
    )


class _Stop(Exception):
    """The transfer was stopped (ABOR, watchdog, session end)."""


NOT_PUMPED = object()  # what `TLSPump._run` fires with when it left the work to Twisted


class TLSPump:
    """Common part: hand the socket to a pool thread and take it back afterwards."""

    direction = ""  # "send" or "receive"
    # Hand-offs done in this process, by direction: for tests and the curious.
    handed_off: ClassVar[Counter[str]] = Counter()

    def __init__(self, connection: Any, reactor: Any) -> None:
        self.connection = connection  # data.DataConnection
        self.reactor = reactor
        self._stopped = False
        self._conn: SSL.Connection | None = None
        self._fd = -1

    @staticmethod
    def usable(connection: Any, reactor: Any) -> bool:
        """Whether this data connection can be pumped in a thread right now."""
        from securetransport.ftp.data import raw_socket

        tls = connection.transport
        return (
            connection.tls is not None
            and connection.lost_reason is None
            and hasattr(reactor, "getThreadPool")
            and raw_socket(tls) is not None
            and real_connection(connection.tls_connection) is not None
            and _tls_layer_idle(tls)
        )

    def stop(self) -> None:
        self._stopped = True

    def _wait(self, fd: int, readable: bool) -> None:
        if self._stopped:
            raise _Stop()
        if readable:
            select.select([fd], [], [], POLL_SECONDS)
        else:
            select.select([], [fd], [], POLL_SECONDS)

    def _hand_off(self) -> Deferred[bool]:
        """Stop Twisted reading, let its send buffer drain, bind the SSL to the socket.

        Fires with False, leaving everything to Twisted, when the connection ended or
        began to close meanwhile (a small upload can be complete already).
        """
        from securetransport.ftp.data import raw_socket, socket_transport

        connection = self.connection
        tls = connection.transport
        connection.pause_reading()
        connection.in_thread = self
        conn = real_connection(connection.tls_connection)
        assert conn is not None
        tcp = socket_transport(tls)
        ready: Deferred[bool] = Deferred()

        def check() -> None:
            if self._stopped:
                ready.errback(Failure(_Stop()))
            elif (
                connection.lost_reason is not None
                or not _tls_layer_idle(tls)
                or pending_in_memory_bios(conn) > pending_in_memory_bios(conn, incoming=False)
            ):
                ready.callback(False)  # ended, closing, or input not yet read by OpenSSL
            elif pending_in_memory_bios(conn) or _unsent(tcp) > 0:
                # OpenSSL's output not yet through Twisted's TLS layer and TCP buffer.
                tls._flushSendBIO()
                self.reactor.callLater(DRAIN_POLL, check)
            else:
                sock = raw_socket(tls)
                self._fd = sock.fileno()
                bind_to_socket(conn, self._fd)
                self._conn = conn
                TLSPump.handed_off[self.direction] += 1
                ready.callback(True)

        # Not now: we may be inside Twisted's TLS dataReceived, which goes on using the
        # SSL object after this call returns.
        self.reactor.callLater(0, check)
        return ready

    def _take_back(self) -> None:
        """On the reactor, after the thread returned: memory BIOs again, reading again."""
        if self._conn is not None:
            unbind_from_socket(self._conn)
            self._conn = None
        self.connection.thread_done()
        self.connection.resume_reading()

    def _run(self, work: Any) -> Deferred[Any]:
        """Run `work` in a pool thread on the bound socket; fires with its result, or
        with NOT_PUMPED when the connection was not handed off."""

        def go(bound: bool) -> Any:
            if not bound:
                return NOT_PUMPED
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work)

        def back(result: Any) -> Any:
            self._take_back()
            return result

        return self._hand_off().addCallback(go).addBoth(back)


class TLSFileSender(TLSPump):
    """RETR on protected data: `SSL_write` of large file chunks on the socket."""

    direction = "send"

    def __init__(self, handle: IReadHandle, connection: Any, offset: int, reactor: Any) -> None:
        super().__init__(connection, reactor)
        self.handle = handle
        self.offset = offset

    def start(self) -> Deferred[None]:
        """Fires when the whole file is sent (the caller then finishes the connection)."""
        from securetransport.ftp.data import DataError, FileSender

        def done(result: object) -> object:
            if self._stopped:
                return Failure(DataError(Reply.TRANSFER_ABORTED, "Transfer aborted"))
            if result is NOT_PUMPED:
                return FileSender(self.handle, self.connection, self.offset).start()
            if isinstance(result, Failure):
                if not result.check(_Stop, _Broken, OSError):
                    log.failure("TLS send failed", result)
                return Failure(
                    DataError(Reply.TRANSFER_ABORTED, "Connection closed; transfer aborted")
                )
            return None

        return self._run(self._pump).addBoth(done)  # type: ignore[return-value]

    def _pump(self) -> None:
        conn, fd = self._conn, self._fd
        assert conn is not None
        file_fd = self.handle.fileno()
        offset, end = self.offset, self.handle.size
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        connection = self.connection
        while offset < end:
            if self._stopped:
                raise _Stop()
            got = os.preadv(file_fd, [view[: min(CHUNK, end - offset)]], offset)
            if got == 0:  # the file shrank under us: send what there is
                break
            sent = 0
            while sent < got:
                moved = _ssl_io(conn, True, buffer, sent, got - sent)
                if moved > 0:
                    sent += moved
                    connection.bytes_sent += moved
                else:
                    self._wait(fd, readable=moved < 0)
            offset += got


class ChunkSink(Protocol):
    """Where a `TLSFileReceiver` puts what it reads: an upload, or (at an edge) the link."""

    def write(self, data: bytes) -> Deferred[None]:
        """Take `data`; the Deferred fires when the sink can take more."""
        ...


class TLSFileReceiver(TLSPump):
    """STOR/APPE/STOU on protected data: `SSL_read` on the socket into the upload.

    The reactor writes each chunk into the upload (its back-pressure holds the thread).
    The result is True only when the client ended with close_notify.
    """

    direction = "receive"

    def __init__(self, upload: ChunkSink | IUpload, connection: Any, reactor: Any) -> None:
        super().__init__(connection, reactor)
        self.upload = upload
        self.error: Failure | None = None
        self._slots = threading.Semaphore(UPLOADS_IN_FLIGHT)

    def start(self) -> Deferred[bool]:
        connection = self.connection
        # What arrived before the hand-off (through Twisted's TLS layer) goes first.
        connection.attach(self._write)

        def done(result: object) -> object:
            if result is NOT_PUMPED:
                return connection.closed  # Twisted's TLS layer saw the end: its verdict
            if isinstance(result, Failure):
                if not result.check(_Stop, _Broken, OSError) and not self._stopped:
                    log.failure("TLS receive failed", result)
                clean = False
            else:
                clean = bool(result) and not self._stopped
            connection.pump_verdict = clean
            if clean:
                connection.finish()  # our close_notify (after held tickets), then close
            else:
                connection.abort()
            return connection.closed

        return self._run(self._pump).addBoth(done)  # type: ignore[return-value]

    def _write(self, data: bytes) -> Deferred[None] | None:
        """On the reactor: one chunk into the upload."""
        if self.error is not None:
            return None
        d = self.upload.write(data)
        d.addErrback(self._write_failed)
        return d

    def _write_failed(self, failure: Failure) -> None:
        if self.error is None:
            self.error = failure
            self.stop()

    def _deliver(self, data: bytearray) -> None:
        """On the reactor: write, and free a slot when the upload can take more."""
        d = self._write(data)  # type: ignore[arg-type]
        if d is None:
            self._slots.release()
        else:
            d.addBoth(lambda _: self._slots.release())

    def _hand_over(self, buffer: bytearray, filled: int) -> bytearray:
        """In the thread: wait for a free slot, pass the first `filled` bytes of `buffer`
        to the reactor; return a buffer to fill next."""
        while not self._slots.acquire(timeout=POLL_SECONDS):
            if self._stopped:
                raise _Stop()
        if filled < len(buffer):
            self.reactor.callFromThread(self._deliver, buffer[:filled])
            return buffer
        # Handed over whole (an upload may keep what it is given): a new one to fill.
        self.reactor.callFromThread(self._deliver, buffer)
        return bytearray(CHUNK)

    def _pump(self) -> bool:
        conn, fd = self._conn, self._fd
        assert conn is not None
        connection = self.connection
        read = _ssl_reader(conn)
        buffer = bytearray(CHUNK)
        base = _buffer_pointer(buffer)
        filled = 0
        clean = False
        try:
            while True:
                if self._stopped:
                    raise _Stop()
                try:
                    moved = read(base, filled, CHUNK - filled)
                except _Closed:
                    clean = True
                    break
                if moved > 0:
                    filled += moved
                    connection.bytes_received += moved
                    if filled == CHUNK:
                        buffer = self._hand_over(buffer, filled)
                        base = _buffer_pointer(buffer)
                        filled = 0
                    continue
                readable = moved == 0
                if filled and readable:
                    ready, _, _ = select.select([fd], [], [], UPLOAD_LINGER)
                    if ready:
                        continue
                    buffer = self._hand_over(buffer, filled)
                    base = _buffer_pointer(buffer)
                    filled = 0
                self._wait(fd, readable=readable)
        except _Broken:
            clean = False
        if filled:
            self._hand_over(buffer, filled)
        # Every chunk written (or failed) before the verdict goes back.
        for _ in range(UPLOADS_IN_FLIGHT):
            while not self._slots.acquire(timeout=POLL_SECONDS):
                if self._stopped:
                    raise _Stop()
        return clean and self.error is None


QUEUE_LIMIT = 1 << 20  # bytes a `TLSQueueSender` holds before its feeder is paused


class TLSQueueSender(TLSPump):
    """Protected data fed on the reactor (at an edge: from the link), `SSL_write` on the
    socket in a pool thread. It holds at most about `QUEUE_LIMIT` bytes: past that it
    calls `on_full`, and `on_room` once the thread has sent half of it.

    `start()` fires once `end()` was called and everything fed was sent (the caller then
    finishes the connection), or with a failure. Not handed off (the connection ended or
    began closing first), what was fed goes through Twisted's TLS layer, as later feeds do.
    """

    direction = "send"

    def __init__(
        self,
        connection: Any,
        reactor: Any,
        on_full: Callable[[], None],
        on_room: Callable[[], None],
        limit: int = QUEUE_LIMIT,
    ) -> None:
        super().__init__(connection, reactor)
        self.on_full = on_full
        self.on_room = on_room
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._ended = False
        self._full = False
        self._direct = False
        self._changed = threading.Condition()
        self._ended_direct: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        def done(result: object) -> object:
            if self._stopped:
                return Failure(_Stop())
            if result is NOT_PUMPED:
                self._direct = True
                with self._changed:
                    chunks, self._chunks, self._queued = self._chunks, deque(), 0
                for chunk in chunks:
                    self.connection.write(chunk)
                self._room()
                if self._ended:
                    return None
                return self._ended_direct
            return result

        return self._run(self._pump).addBoth(done)  # type: ignore[return-value]

    def feed(self, data: bytes) -> None:
        """On the reactor: queue `data` for the thread."""
        if self._direct:
            self.connection.write(data)
            return
        with self._changed:
            self._chunks.append(data)
            self._queued += len(data)
            full = self._queued >= self.limit
            self._changed.notify()
        if full and not self._full:
            self._full = True
            self.on_full()

    def end(self) -> None:
        """On the reactor: nothing more comes; `start()` fires once all is sent."""
        self._ended = True
        with self._changed:
            self._changed.notify()
        if self._direct and not self._ended_direct.called:
            self._ended_direct.callback(None)

    def stop(self) -> None:
        super().stop()
        with self._changed:
            self._changed.notify()

    def _room(self) -> None:
        """On the reactor: resume the feeder once the queue is down to half."""
        with self._changed:
            room = self._queued <= self.limit // 2
        if room and self._full:
            self._full = False
            self.on_room()

    def _pump(self) -> None:
        conn, fd = self._conn, self._fd
        assert conn is not None
        connection = self.connection
        while True:
            with self._changed:
                while not self._chunks and not self._ended:
                    if self._stopped:
                        raise _Stop()
                    self._changed.wait(POLL_SECONDS)
                if not self._chunks:
                    return  # ended, and everything sent
                data = self._chunks.popleft()
            sent = 0
            while sent < len(data):
                moved = _ssl_io(conn, True, data, sent, len(data) - sent)
                if moved > 0:
                    sent += moved
                    connection.bytes_sent += moved
                else:
                    self._wait(fd, readable=moved < 0)
            with self._changed:
                self._queued -= len(data)
                room = self._full and self._queued <= self.limit // 2
            if room:
                self.reactor.callFromThread(self._room)
