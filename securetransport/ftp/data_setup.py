"""PASV, EPSV, PORT and EPRT: the data connection's set-up, and the binding check of
protected data connections (SPEC section 5: 522 unless the TLS session was resumed from
this control connection's session, when the class requires it)."""

from __future__ import annotations

from twisted.logger import Logger

from securetransport.client import normalize_address
from securetransport.ftp import addresses
from securetransport.ftp.passive import NoPassivePort
from securetransport.ftp.session import Session
from securetransport.replies import Reply
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.reuse import check_data_session

log = Logger(namespace="securetransport.ftp.data_setup")


class DataSetupCommands:
    def __init__(self, session: Session) -> None:
        self.session = session

    def check_data_tls(self, info: HandshakeInfo) -> str | None:
        """A protected data connection's handshake: None to accept it, or the 522 text."""
        session = self.session
        klass = session.state.klass
        required = klass is None or klass.session_reuse == "required"
        control = session.handshake
        assert control is not None  # data is protected only under a protected control channel
        problem = check_data_session(control, info, info.resumed, required)
        session.audit.tls_data(info, accepted=problem is None)
        return problem

    def _listen_passive(self) -> int | None:
        session = self.session
        session.drop_data_setup()
        try:
            data, port = session.channel.passive_data(
                session.state.prot_private, self.check_data_tls, session.config.server.data_timeout
            )
        except NoPassivePort:
            session.reply(Reply.CANT_OPEN_DATA, "No passive port free; try again")
            return None
        session.data = data
        return port

    def ftp_PASV(self, argument: str) -> None:
        session = self.session
        if session.state.epsv_all:
            session.reply(Reply.BAD_SEQUENCE, "EPSV ALL in effect; use EPSV")
            return
        announced = session.config.passive.address or normalize_address(session.channel.local_host)
        if ":" in announced:
            session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "PASV is for IPv4; use EPSV")
            return
        port = self._listen_passive()
        if port is not None:
            session.reply(Reply.PASSIVE, addresses.format_pasv_reply(announced, port))

    def ftp_EPSV(self, argument: str) -> None:
        session = self.session
        try:
            mode = addresses.parse_epsv_argument(argument or None)
        except addresses.AddressError as error:
            session.reply(error.code, error.text)
            return
        family = addresses.network_protocol(session.channel.local_host)
        if isinstance(mode, int) and mode != family:
            session.reply(
                Reply.NETWORK_PROTOCOL_NOT_SUPPORTED,
                f"Network protocol not supported, use ({family})",
            )
            return
        if mode == "ALL":
            session.state.epsv_all = True
            session.reply(Reply.OK, "EPSV ALL ok")
            return
        port = self._listen_passive()
        if port is not None:
            session.reply(Reply.EXTENDED_PASSIVE, addresses.format_epsv_reply(port))

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
            session.state.prot_private,
            self.check_data_tls,
            session.config.server.data_timeout,
            host,
            port,
        )
        session.reply(Reply.OK, f"{verb} command successful")

    def ftp_PORT(self, argument: str) -> None:
        self._active("PORT", argument)

    def ftp_EPRT(self, argument: str) -> None:
        self._active("EPRT", argument)
