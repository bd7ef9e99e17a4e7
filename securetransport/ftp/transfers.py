"""Transfers and listings (RETR STOR APPE STOU LIST NLST MLSD), ABOR, and the transfer
parameters (REST TYPE MODE STRU ALLO).

A `Transfer` goes through five stages, each a method:

1. prepare: open the file, the upload or the listing (in the filesystem's threads);
2. open: wait for the data connection (passive accept or active connect, and for
   protected data its handshake and binding check);
3. run: move the bytes (sendfile, a file sender, or into the upload);
4. finish: commit or abort the upload, close the file;
5. report: the final reply, the audit and xferlog lines.

ABOR, the data watchdog (`data_timeout` without progress) and the end of the session
stop it at any stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.ftp import parser
from securetransport.ftp.data import (
    DataChannel,
    DataConnection,
    DataError,
    FileReceiver,
    FileSender,
    SendfileSender,
)
from securetransport.ftp.files import listing_lines, strip_list_options
from securetransport.ftp.session import IRunningTransfer, Session
from securetransport.ftp.state import Phase
from securetransport.ftp.tls_pump import TLSFileReceiver, TLSFileSender, TLSPump
from securetransport.replies import Reply
from securetransport.vfs import FilesystemError, IReadHandle, IUpload

log = Logger(namespace="securetransport.ftp.transfers")

SENDFILE_THREADS = 6  # of the reactor's 10 pool threads (sendfile and TLS pumps)
PUMP_MIN_BYTES = 256 * 1024  # smaller protected downloads stay on the reactor's TLS layer
MAX_DATA_TLS_REFUSALS = 20  # 522s in a row: lftp retries a 522 in a tight loop
UPLOADS = frozenset({"STOR", "APPE", "STOU"})

Outcome = tuple[int, str]
R = TypeVar("R")  # what a transfer's prepare stage opens: a file, an upload, listing lines


def take_thread_slot(session: Session) -> Callable[[R], R] | None:
    """A reactor pool thread for a whole transfer (sendfile, TLS pump), or None when the
    transfers already holding one have reached SENDFILE_THREADS; call what it returns
    (with the transfer's result) when done."""
    runtime = session.runtime
    if not hasattr(session.reactor, "getThreadPool") or runtime.sendfile_active >= SENDFILE_THREADS:
        return None
    runtime.sendfile_active += 1

    def release(result: R) -> R:
        runtime.sendfile_active -= 1
        return result

    return release


def sent_result(clean: bool) -> Outcome:
    if clean:
        return Reply.TRANSFER_COMPLETE, "Transfer complete"
    return Reply.TRANSFER_ABORTED, "Connection closed; transfer aborted"


class Job(Generic[R]):
    """What one kind of transfer does at the stages that differ."""

    def prepare(self) -> Deferred[R]:
        raise NotImplementedError

    def run(
        self, resource: R, connection: DataConnection, transfer: Transfer[R]
    ) -> Deferred[Outcome]:
        raise NotImplementedError

    def finish(self, resource: R, ok: bool) -> Deferred[Any] | None:
        return None


@implementer(IRunningTransfer)
class Transfer(Generic[R]):
    """One transfer command, from its data set-up to its reply."""

    def __init__(
        self, session: Session, verb: str, path: str, data: DataChannel, job: Job[R]
    ) -> None:
        self.session = session
        self.verb = verb
        self.path = path
        self.data = data
        self.job = job
        self.protected = data.tls is not None  # what the connection is, whatever PROT says now
        self.connection: DataConnection | None = None
        self.aborted = False
        self.stalled = False
        self.watchdog: IDelayedCall | None = None
        self.started = time.monotonic()
        self.done: Deferred[None] = Deferred()  # fires when the command has been answered

    @property
    def bytes(self) -> int:
        if self.connection is None:
            return 0
        return self.connection.bytes_sent + self.connection.bytes_received

    @property
    def moved(self) -> int:
        """The bytes of the file (not of the listing) this transfer moved."""
        if self.connection is None:
            return 0
        return (
            self.connection.bytes_received if self.verb in UPLOADS else self.connection.bytes_sent
        )

    # ------------------------------------------------------------------- 1. prepare
    def start(self) -> Deferred[None]:
        session = self.session
        session.transfer = self
        session.state.phase = Phase.TRANSFER
        try:
            prepared = self.job.prepare()
        except FilesystemError as error:
            prepared = defer.fail(error)
        prepared.addCallbacks(self._open, self._not_prepared).addErrback(self._unexpected)
        return self.done

    def _not_prepared(self, failure: Failure) -> None:
        self._leave()
        self.data.close()
        error = failure.value
        if isinstance(error, FilesystemError):
            self.session.reply(error.code, parser.sanitize_reply_text(error.message))
        else:
            log.failure("cannot start {verb}", failure, verb=self.verb)
            self.session.reply(Reply.LOCAL_ERROR, "Local error")
        self.done.callback(None)

    def _unexpected(self, failure: Failure) -> None:
        log.failure("{verb} failed", failure, verb=self.verb)
        self._leave()
        self.data.close()
        if not self.done.called:
            self.session.reply(Reply.LOCAL_ERROR, "Local error")
            self.done.callback(None)

    # ------------------------------------------------------------------- 2. open
    def _open(self, resource: R) -> Deferred[None] | None:
        session = self.session
        if self.aborted or session.closing:
            # ABOR (or a disconnect) came while the file was being opened.
            return self._finish(resource, False, Reply.TRANSFER_ABORTED, "Aborted", record=False)
        self.data.expect("receive" if self.verb in UPLOADS else "send")
        announced = False
        if not self.data.settled_before_command():
            session.reply(Reply.OPENING_DATA, f"Opening data connection for {self.verb}")
            announced = True

        def connected(connection: DataConnection) -> Deferred[Outcome]:
            self.connection = connection
            self._watch_progress(-1)
            if not announced:
                session.reply(Reply.OPENING_DATA, f"Opening data connection for {self.verb}")
            return self.job.run(resource, connection, self)

        opened = self.data.open().addCallback(connected)
        opened.addBoth(self._ran, resource)
        return None

    # ------------------------------------------------------------------- 3. run (the job)
    def _ran(self, outcome: Outcome | Failure, resource: R) -> Deferred[None] | None:
        if isinstance(outcome, Failure):
            ok = False
            error = outcome.value
            if isinstance(error, DataError):
                code, text = error.code, error.text
            elif isinstance(error, FilesystemError):
                code, text = error.code, parser.sanitize_reply_text(error.message)
            else:
                log.failure("transfer failed", outcome)
                code, text = Reply.LOCAL_ERROR, "Transfer failed: local error"
        else:
            code, text = outcome
            ok = code == Reply.TRANSFER_COMPLETE and not self.aborted
        if self.stalled:
            ok = False
            code, text = Reply.TRANSFER_ABORTED, "Data connection timed out"
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()
        return self._finish(resource, ok, code, text)

    # ------------------------------------------------------------------- 4. finish
    def _finish(
        self, resource: R, ok: bool, code: int, text: str, *, record: bool = True
    ) -> Deferred[None] | None:
        seconds = time.monotonic() - self.started
        finished = self.job.finish(resource, ok)
        if not isinstance(finished, Deferred):
            self._report(ok, code, text, seconds, record)
            return None
        outcome: list[tuple[bool, int, str]] = [(ok, code, text)]

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, FilesystemError):
                outcome[0] = (False, error.code, parser.sanitize_reply_text(error.message))
            else:
                log.failure("finishing a transfer failed", failure)
                outcome[0] = (False, Reply.LOCAL_ERROR, "Transfer failed: local error")

        def report(_: object) -> None:
            self._report(*outcome[0], seconds, record)

        finished.addErrback(failed).addCallback(report)
        return finished

    # ------------------------------------------------------------------- 5. report
    def _report(self, ok: bool, code: int, text: str, seconds: float, record: bool) -> None:
        session = self.session
        if record:
            session.audit.transfer(
                verb=self.verb,
                path=self.path,
                user=session.state.username,
                size=self.moved,
                seconds=seconds,
                ok=ok,
                code=code,
                protected=self.protected,
                binary=session.state.binary,
            )
        self._leave()
        if not self.aborted:
            session.reply(code, text)
        self.data.close()
        self.done.callback(None)
        self._count_tls_refusal(code)

    def _leave(self) -> None:
        session = self.session
        if session.transfer is self:
            session.transfer = None
            if session.state.phase is Phase.TRANSFER:
                session.state.phase = Phase.LOGGED_IN

    def _count_tls_refusal(self, code: int) -> None:
        """Close a session that keeps retrying data connections we refuse (522)."""
        session, state = self.session, self.session.state
        if code != Reply.DATA_TLS_FAILED:
            state.data_tls_refusals = 0
            return
        state.data_tls_refusals += 1
        if state.data_tls_refusals >= MAX_DATA_TLS_REFUSALS and not session.closing:
            session.reply(Reply.SERVICE_UNAVAILABLE, "Too many refused data connections; closing")
            session.close()

    # ------------------------------------------------------------------- stopping
    def abort(self) -> None:
        self.aborted = True
        if self.watchdog is not None and self.watchdog.active():
            self.watchdog.cancel()
        if self.connection is not None:
            self.connection.abort()
        self.data.close()

    def _watch_progress(self, last: int, since: float | None = None) -> None:
        """Abort when no byte moved for `data_timeout` seconds (checked ten times per
        `data_timeout`, so a stall is caught within 10% of it)."""
        session = self.session
        if session.transfer is not self or self.connection is None:
            return
        now = session.reactor.seconds()
        timeout = session.config.server.data_timeout
        moved = self.bytes
        if moved != last or since is None:
            since = now
        elif now - since >= timeout:
            self.stalled = True
            self.connection.abort()
            return
        self.watchdog = session.reactor.callLater(timeout / 10, self._watch_progress, moved, since)


# ----------------------------------------------------------------------------- the jobs


class Download(Job[IReadHandle]):
    def __init__(self, session: Session, path: str, offset: int) -> None:
        self.session = session
        self.path = path
        self.offset = offset

    def prepare(self) -> Deferred[IReadHandle]:
        return self.session.filesystem().open_read(self.path)

    def run(
        self, handle: IReadHandle, connection: DataConnection, transfer: Transfer[IReadHandle]
    ) -> Deferred[Outcome]:
        if self.offset > handle.size:
            raise DataError(Reply.BAD_RESTART, "Restart offset beyond the end of the file")
        reactor = self.session.reactor
        started: Deferred[None]
        release = None
        if connection.tls is None or (
            handle.size - self.offset >= PUMP_MIN_BYTES and TLSPump.usable(connection, reactor)
        ):
            release = take_thread_slot(self.session)
        if release is None:
            started = FileSender(handle, connection, self.offset).start()
        elif connection.tls is None:
            started = SendfileSender(handle, connection, self.offset, reactor).start()
        else:
            started = TLSFileSender(handle, connection, self.offset, reactor).start()
        if release is not None:
            started.addBoth(release)
        finished: Deferred[bool] = started.addCallback(lambda _: connection.finish())
        return finished.addCallback(sent_result)

    def finish(self, handle: IReadHandle, ok: bool) -> None:
        handle.close()


class Upload(Job[IUpload]):
    def __init__(
        self, session: Session, path: str, offset: int, *, append: bool, unique: bool
    ) -> None:
        self.session = session
        self.path = path
        self.offset = offset
        self.append = append
        self.unique = unique

    def prepare(self) -> Deferred[IUpload]:
        return self.session.filesystem().open_upload(
            self.path, offset=self.offset, append=self.append, unique=self.unique
        )

    def run(
        self, upload: IUpload, connection: DataConnection, transfer: Transfer[IUpload]
    ) -> Deferred[Outcome]:
        transfer.path = upload.path
        reactor = self.session.reactor
        release = None
        if connection.tls is not None and TLSPump.usable(connection, reactor):
            release = take_thread_slot(self.session)
        receiver: FileReceiver | TLSFileReceiver
        if release is None:
            receiver = FileReceiver(upload, connection)
        else:
            receiver = TLSFileReceiver(upload, connection, reactor)

        def closed(clean: bool) -> Outcome:
            if receiver.error is not None:
                receiver.error.raiseException()
            if transfer.aborted:
                return Reply.TRANSFER_ABORTED, "Transfer aborted"
            if not clean:
                if transfer.protected:
                    return (
                        Reply.TRANSFER_ABORTED,
                        "Upload ended without TLS close_notify: transfer failed, file not stored",
                    )
                return Reply.TRANSFER_ABORTED, "Connection lost; transfer aborted"
            if self.unique:
                name = parser.sanitize_reply_text(upload.path)
                return Reply.TRANSFER_COMPLETE, f"Transfer complete; stored as {name}"
            return Reply.TRANSFER_COMPLETE, "Transfer complete"

        received = receiver.start()
        if release is not None:
            received.addBoth(release)
        return received.addCallback(closed)

    def finish(self, upload: IUpload, ok: bool) -> Deferred[Any]:
        return upload.commit() if ok else upload.abort()


class Listing(Job[list[str]]):
    def __init__(self, session: Session, path: str, verb: str) -> None:
        self.session = session
        self.path = path
        self.verb = verb

    def prepare(self) -> Deferred[list[str]]:
        return listing_lines(self.session, self.path, self.verb)

    def run(
        self, lines: list[str], connection: DataConnection, transfer: Transfer[list[str]]
    ) -> Deferred[Outcome]:
        payload = "".join(line + "\r\n" for line in lines).encode("utf-8")
        if payload:
            connection.write(payload)
        return connection.finish().addCallback(sent_result)


# ----------------------------------------------------------------------------- commands


class TransferCommands:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _data_ready(self) -> DataChannel | None:
        """The pending data set-up, taken for a transfer; or None after a 425 or 521."""
        session = self.session
        data = session.data
        if data is None:
            session.reply(Reply.CANT_OPEN_DATA, "Use PASV, EPSV, PORT or EPRT first")
            return None
        session.data = None
        klass = session.state.klass
        # The set-up's own protection decides (fixed at PASV/PORT), not the PROT level
        # now: PROT C, PASV, PROT P must not open a clear transfer.
        if klass is not None and klass.ssl == "mandatory" and data.tls is None:
            data.close()
            session.audit.refused(Reply.PROT_NOT_ALLOWED)
            session.reply(
                Reply.PROT_NOT_ALLOWED, "Data protection required for this account: use PROT P"
            )
            return None
        return data

    def _run(self, verb: str, path: str, job: Callable[[], Job[R]]) -> Deferred[None] | None:
        data = self._data_ready()
        if data is None:
            return None
        return Transfer(self.session, verb, path, data, job()).start()

    def _take_rest(self) -> int:
        offset, self.session.state.rest = self.session.state.rest, 0
        return offset

    def ftp_RETR(self, argument: str) -> Deferred[None] | None:
        session = self.session
        path = session.resolve(argument)
        offset = self._take_rest()
        return self._run("RETR", path, lambda: Download(session, path, offset))

    def _upload(
        self, verb: str, argument: str, *, append: bool = False, unique: bool = False
    ) -> Deferred[None] | None:
        session = self.session
        path = session.resolve(argument)
        offset = self._take_rest()
        return self._run(
            verb, path, lambda: Upload(session, path, offset, append=append, unique=unique)
        )

    def ftp_STOR(self, argument: str) -> Deferred[None] | None:
        return self._upload("STOR", argument)

    def ftp_APPE(self, argument: str) -> Deferred[None] | None:
        return self._upload("APPE", argument, append=True)

    def ftp_STOU(self, argument: str) -> Deferred[None] | None:
        return self._upload("STOU", argument or "file", unique=True)

    def _list(self, verb: str, argument: str) -> Deferred[None] | None:
        session = self.session
        target = strip_list_options(argument) if verb in ("LIST", "NLST") else argument
        path = session.resolve(target or ".")
        return self._run(verb, path, lambda: Listing(session, path, verb))

    def ftp_LIST(self, argument: str) -> Deferred[None] | None:
        return self._list("LIST", argument)

    def ftp_NLST(self, argument: str) -> Deferred[None] | None:
        return self._list("NLST", argument)

    def ftp_MLSD(self, argument: str) -> Deferred[None] | None:
        return self._list("MLSD", argument)

    def ftp_ABOR(self, argument: str) -> None:
        session = self.session
        transfer = session.transfer
        if transfer is not None:
            transfer.abort()
            session.reply(Reply.TRANSFER_ABORTED, "Transfer aborted")
            session.reply(Reply.TRANSFER_COMPLETE, "ABOR successful")
            return
        session.drop_data_setup()
        session.reply(Reply.DATA_OPEN_NO_TRANSFER, "ABOR successful; no transfer in progress")

    # ------------------------------------------------------------------- parameters
    def ftp_REST(self, argument: str) -> None:
        session = self.session
        text = argument.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            session.reply(Reply.SYNTAX_ERROR_ARGS, "REST needs a non-negative byte offset")
            return
        session.state.rest = int(text)
        session.reply(
            Reply.PENDING_FURTHER_INFO,
            f"Restarting at {session.state.rest}; send RETR, STOR or APPE",
        )

    def ftp_TYPE(self, argument: str) -> None:
        session = self.session
        kind = argument.strip().upper().split()
        if kind and kind[0] in ("I", "L"):
            if kind[0] == "L" and kind[1:] != ["8"]:
                session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "Only TYPE L 8 is supported")
                return
            session.state.binary = True
            session.reply(Reply.OK, "Type set to I")
        elif kind and kind[0] == "A" and kind[1:] in ([], ["N"]):
            session.state.binary = False
            session.reply(Reply.OK, "Type set to A (bytes are transferred unchanged)")
        else:
            session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "Type not supported")

    def ftp_MODE(self, argument: str) -> None:
        if argument.strip().upper() == "S":
            self.session.reply(Reply.OK, "Mode set to S")
        else:
            self.session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "Only stream mode is supported")

    def ftp_STRU(self, argument: str) -> None:
        if argument.strip().upper() == "F":
            self.session.reply(Reply.OK, "Structure set to F")
        else:
            self.session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "Only file structure is supported")

    def ftp_ALLO(self, argument: str) -> None:
        self.session.reply(Reply.SUPERFLUOUS, "ALLO not needed")
