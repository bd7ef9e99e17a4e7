"""AUTH, PBSZ, PROT, CCC, and what the control connection's TLS handshake tells us."""

from __future__ import annotations

from datetime import UTC, datetime

from securetransport.ftp.session import Session
from securetransport.replies import Reply
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.verify import verify_certificate

MECHANISMS = ("TLS", "TLS-C", "SSL", "TLS-P")


class SecurityCommands:
    def __init__(self, session: Session) -> None:
        self.session = session

    def tls_up(self, info: HandshakeInfo) -> None:
        """The control handshake completed: record its facts and verify the chain once
        (against the trust store only; USER adds the account's pins)."""
        session = self.session
        session.state.protected = True
        session.handshake = info
        trust = session.runtime.tls.trust if session.runtime.tls is not None else None
        session.certificate = None
        if info.peer_chain and trust is not None:
            session.certificate = verify_certificate(info.peer_chain, trust, now=datetime.now(UTC))
        session.audit.tls_control(info, session.certificate)

    def ftp_AUTH(self, argument: str) -> None:
        session, state = self.session, self.session.state
        mechanism = argument.strip().upper()
        if state.protected or session.implicit:
            session.reply(Reply.BAD_SEQUENCE, "TLS is already active")
            return
        if mechanism not in MECHANISMS:
            session.reply(
                Reply.NOT_IMPLEMENTED_PARAMETER, f"AUTH {mechanism} not supported; use TLS"
            )
            return
        if not session.channel.session_ready():
            session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "TLS is not configured on this server")
            return
        state.login_refused()  # a pending 331 is dropped: USER again after the handshake
        if mechanism in ("SSL", "TLS-P"):
            state.prot_private = True
            state.pbsz = True
        session.reply(Reply.AUTH_OK, f"AUTH {mechanism} successful; starting TLS")
        state.tls_started = True
        session.channel.start_tls()

    def ftp_PBSZ(self, argument: str) -> None:
        if not argument.strip().isdigit():
            self.session.reply(Reply.SYNTAX_ERROR_ARGS, "PBSZ takes a number")
            return
        self.session.state.pbsz = True
        self.session.reply(Reply.OK, "PBSZ=0")

    def ftp_PROT(self, argument: str) -> None:
        session = self.session
        level = argument.strip().upper()
        if level == "C":
            session.state.prot_private = False
            session.reply(Reply.OK, "Protection level set to Clear")
        elif level == "P":
            session.state.prot_private = True
            session.reply(Reply.OK, "Protection level set to Private")
        elif level in ("S", "E"):
            session.reply(Reply.PROT_NOT_SUPPORTED, f"Protection level {level} not supported")
        else:
            session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, f"Unknown protection level {level}")

    def ftp_CCC(self, argument: str) -> None:
        if self.session.state.protected:
            self.session.reply(
                Reply.POLICY_DENIED, "CCC refused: the control channel stays protected"
            )
        else:
            self.session.reply(Reply.CCC_REFUSED, "CCC needs a protected control channel")
