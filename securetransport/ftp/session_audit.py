"""Every audit-log and xferlog event of one FTP session, written from one place."""

from __future__ import annotations

from securetransport.audit import AuditLog, XferLog
from securetransport.policy import UserDecision
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.verify import CertificateVerdict

LISTINGS = frozenset({"LIST", "NLST", "MLSD"})


class SessionAudit:
    """The events of one session, with its id and client address filled in."""

    def __init__(self, audit: AuditLog, xferlog: XferLog, session_id: str, peer: str) -> None:
        self.audit = audit
        self.xferlog = xferlog
        self.session_id = session_id
        self.peer = peer
        self.via: str | None = None  # "edge:NAME" when relayed by an edge (SPEC section 8)

    def session_start(self, port: int, implicit: bool) -> None:
        via = {"via": self.via} if self.via is not None else {}
        self.audit.event(
            "session-start",
            session=self.session_id,
            client=self.peer,
            port=port,
            implicit=implicit,
            **via,
        )

    def session_end(self, user: str | None) -> None:
        self.audit.event("session-end", session=self.session_id, user=user)

    def tls_control(self, info: HandshakeInfo, certificate: CertificateVerdict | None) -> None:
        self.audit.event(
            "tls",
            session=self.session_id,
            channel="control",
            version=info.tls_version,
            cipher=info.cipher,
            resumed=info.resumed,
            certificate_subject=certificate.subject if certificate else None,
            certificate_fingerprint=certificate.fingerprint if certificate else None,
            certificate_good=certificate.good if certificate else None,
            certificate_reason=certificate.reason if certificate else None,
        )

    def tls_data(self, info: HandshakeInfo, accepted: bool, sibling: bool = False) -> None:
        self.audit.event(
            "tls",
            session=self.session_id,
            channel="data",
            version=info.tls_version,
            cipher=info.cipher,
            resumed=info.resumed,
            sibling=sibling,
            accepted=accepted,
        )

    def refused(self, reply: int) -> None:
        """A transfer refused before any data connection was used (521)."""
        self.audit.event("refused", session=self.session_id, reply=reply)

    def user(
        self, decision: UserDecision, logged_name: dict[str, str | None], protected: bool
    ) -> None:
        """USER and what the decision table answered."""
        verdict: CertificateVerdict | None = decision.verdict
        if verdict is None or not verdict.presented:
            result = None
        else:
            result = "good" if verdict.good else f"failed: {verdict.reason}"
        self.audit.event(
            "user",
            session=self.session_id,
            client=self.peer,
            **logged_name,
            **{"class": decision.klass.name if decision.klass is not None else None},
            matched=decision.matched,
            reply=decision.reply,
            row=decision.row,
            method=decision.method,
            protected=protected,
            certificate_subject=verdict.subject if verdict else None,
            certificate_fingerprint=verdict.fingerprint if verdict else None,
            certificate_result=result,
        )

    def login_succeeded(self, name: str, method: str, class_name: str | None) -> None:
        self.audit.event(
            "login",
            session=self.session_id,
            user=name,
            method=method,
            result="success",
            **{"class": class_name},
        )

    def login_failed(self, logged_name: dict[str, str | None], method: str, banned: bool) -> None:
        self.audit.event(
            "login",
            session=self.session_id,
            **logged_name,
            method=method,
            result="failure",
            client=self.peer,
            banned=banned,
        )

    def transfer(
        self,
        *,
        verb: str,
        path: str,
        user: str | None,
        size: int,
        seconds: float,
        ok: bool,
        code: int,
        protected: bool,
        binary: bool,
    ) -> None:
        """A finished upload or download (listings are not logged)."""
        if verb in LISTINGS:
            return
        direction = "download" if verb == "RETR" else "upload"
        self.audit.event(
            "transfer",
            session=self.session_id,
            user=user,
            command=verb,
            path=path,
            bytes=size,
            seconds=round(seconds, 3),
            direction=direction,
            result="ok" if ok else "failed",
            reply=int(code),
            protected=protected,
        )
        self.xferlog.transfer(
            seconds=seconds,
            host=self.peer,
            size=size,
            path=path,
            binary=binary,
            direction="o" if verb == "RETR" else "i",
            user=user or "-",
            completed=ok,
        )
