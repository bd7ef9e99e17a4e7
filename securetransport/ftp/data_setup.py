"""PASV, EPSV, PORT and EPRT: the data connection's set-up, and the binding check of
protected data connections (SPEC section 5: 522 unless the TLS session was resumed from
this control connection's session, when the class requires it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from securetransport.client import normalize_address
from securetransport.config import SessionReuse
from securetransport.ftp import addresses
from securetransport.ftp.passive import NoPassivePort
from securetransport.ftp.session import Session
from securetransport.replies import Reply
from securetransport.tls.facts import HandshakeInfo

log = Logger(namespace="securetransport.ftp.data_setup")


class DataSetupCommands:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _reuse(self) -> SessionReuse | None:
        """How a protected data connection must resume TLS; None: the data is clear."""
        state = self.session.state
        if not state.prot_private:
            return None
        return state.klass.session_reuse if state.klass is not None else "required"

    def report_data_tls(self, info: HandshakeInfo, sibling: bool, problem: str | None) -> None:
        """A protected data connection's handshake and binding check (tls.groups)."""
        self.session.audit.tls_data(info, accepted=problem is None, sibling=sibling)

    def _listen_passive(self, answer: Callable[[int], None]) -> Deferred[None] | None:
        """Set up a passive listener and call `answer(port)`; a channel may answer later
        (an edge opens the port at its end): then the Deferred fires once answered."""
        session = self.session
        session.drop_data_setup()
        try:
            result = session.channel.passive_data(
                self._reuse(), self.report_data_tls, session.config.server.data_timeout
            )
        except NoPassivePort:
            session.reply(Reply.CANT_OPEN_DATA, "No passive port free; try again")
            return None

        def ready(pair: tuple[Any, int]) -> None:
            data, port = pair
            if session.closing:
                data.close()
                return
            session.data = data
            answer(port)

        def failed(failure: Failure) -> None:
            failure.trap(NoPassivePort)
            session.reply(Reply.CANT_OPEN_DATA, "No passive port free; try again")

        if isinstance(result, Deferred):
            return result.addCallbacks(ready, failed)
        ready(result)
        return None

    def ftp_PASV(self, argument: str) -> Deferred[None] | None:
        session = self.session
        if session.state.epsv_all:
            session.reply(Reply.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV")
            return None
        # Through an edge, the edge's own passive address (section 8) comes first.
        announced = (
            session.channel.announced
            or session.config.passive.address
            or normalize_address(session.channel.local_host)
        )
        if ":" in announced:
            session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "PASV is for IPv4; use EPSV")
            return None
        return self._listen_passive(
            lambda port: session.reply(Reply.PASSIVE, addresses.format_pasv_reply(announced, port))
        )

    def ftp_EPSV(self, argument: str) -> Deferred[None] | None:
        session = self.session
        try:
            mode = addresses.parse_epsv_argument(argument or None)
        except addresses.AddressError as error:
            session.reply(error.code, error.text)
            return None
        family = addresses.network_protocol(session.channel.local_host)
        if isinstance(mode, int) and mode != family:
            session.reply(
                Reply.NETWORK_PROTOCOL_NOT_SUPPORTED,
                f"Network protocol not supported, use ({family})",
            )
            return None
        if mode == "ALL":
            session.state.epsv_all = True
            session.reply(Reply.OK, "EPSV ALL ok")
            return None
        return self._listen_passive(
            lambda port: session.reply(Reply.EXTENDED_PASSIVE, addresses.format_epsv_reply(port))
        )

    def _active(self, verb: str, argument: str) -> None:
        session = self.session
        if session.state.epsv_all:
            session.reply(Reply.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV")
            return
        try:
            if verb == "PORT":
                host, port = addresses.parse_port(argument)
            else:
                host, port = addresses.parse_eprt(argument)
        except addresses.AddressError as error:
            session.reply(error.code, error.text)
            return
        refused = addresses.check_active_target(host, port, session.peer, verb)
        if refused is not None:
            log.warn(
                "{peer}: {verb} to {host}:{port} refused",
                peer=session.peer,
                verb=verb,
                host=host,
                port=port,
            )
            session.reply(refused.code, refused.text)
            return
        session.drop_data_setup()
        session.data = session.channel.active_data(
            self._reuse(),
            self.report_data_tls,
            session.config.server.data_timeout,
            host,
            port,
        )
        session.reply(Reply.OK, f"{verb} command successful")

    def ftp_PORT(self, argument: str) -> None:
        self._active("PORT", argument)

    def ftp_EPRT(self, argument: str) -> None:
        self._active("EPRT", argument)
