"""One FTP session's engine: the shared `Session`, its handler groups, and dispatch.

The engine is everything but the connection: the protocol shell (`protocol.py`) feeds it
parsed commands and TLS facts, and it reaches the client only through the session's
`IControlChannel`. An edge link's server side can drive the same engine.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from securetransport.ftp import parser
from securetransport.ftp.commands import COMMANDS, Group, check
from securetransport.ftp.data_setup import DataSetupCommands
from securetransport.ftp.files import FileCommands
from securetransport.ftp.login import LoginCommands
from securetransport.ftp.security import SecurityCommands
from securetransport.ftp.session import Session
from securetransport.ftp.transfers import TransferCommands
from securetransport.replies import Reply
from securetransport.tls.facts import HandshakeInfo
from securetransport.vfs import FilesystemError


class SessionCommands:
    """QUIT: at once, or when the transfer in progress has ended."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def ftp_QUIT(self, argument: str) -> None:
        if self.session.transfer is not None:
            self.session.state.quit_after_transfer = True
            return
        self.quit()

    def quit(self) -> None:
        self.session.reply(Reply.CLOSING_CONTROL, "Goodbye")
        self.session.close()


class Engine:
    # The attribute holding each group's handlers (a table per class, not per session:
    # an idle session's memory counts).
    GROUP_ATTRIBUTES = {
        Group.SESSION: "commands",
        Group.SECURITY: "security",
        Group.LOGIN: "login",
        Group.FILES: "files",
        Group.DATA_SETUP: "data_setup",
        Group.TRANSFERS: "transfers",
    }

    def __init__(self, session: Session) -> None:
        self.session = session
        self.commands = SessionCommands(session)
        self.security = SecurityCommands(session)
        self.login = LoginCommands(session)
        self.files = FileCommands(session)
        self.data_setup = DataSetupCommands(session)
        self.transfers = TransferCommands(session)

    def tls_up(self, info: HandshakeInfo) -> None:
        """The control connection's TLS handshake has completed."""
        self.security.tls_up(info)

    def dispatch(self, command: parser.Command) -> Deferred[Any] | None:
        """Run one command: the table's check, then its handler. A Deferred when the
        command goes on after this call (a store lookup, a password check, a transfer)."""
        session = self.session
        if session.closing:
            return None
        spec = COMMANDS.get(command.verb)
        if spec is None:
            session.reply(Reply.SYNTAX_ERROR, f"{command.verb} not understood")
            return None
        argument = command.argument or ""
        refused = check(spec, session.state.phase, argument, session.state.protected)
        if refused is not None:
            session.reply(*refused)
            return None
        if spec.writes and session.read_only:
            session.reply(Reply.FILE_UNAVAILABLE, "Permission denied: read-only account")
            return None
        if spec.writes and not spec.data and command.verb != "REST":
            session.state.rest = 0
        handler = getattr(getattr(self, self.GROUP_ATTRIBUTES[spec.group]), spec.method)
        try:
            result: Deferred[Any] | None = handler(argument)
        except FilesystemError as error:
            session.reply(error.code, parser.sanitize_reply_text(error.message))
            return None
        return result

    def after_command(self) -> bool:
        """A command has ended: True when a QUIT waited for it (and the session closes)."""
        if self.session.state.quit_after_transfer and self.session.transfer is None:
            self.commands.quit()
            return True
        return False
