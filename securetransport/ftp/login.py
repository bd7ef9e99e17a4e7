"""USER, PASS, ACCT and REIN: the access decision (policy.decide_user), the cred portal,
failure delays and bans (SPEC section 4).

A login reads the account once: USER reads it (with the certificate pin query, in one
pool job), decides, and keeps the row in the pending login; PASS hands it to the
portal in the credentials (`auth.PasswordLogin`), so the checker and the realm decide
on that row. A PASS that comes more than `SNAPSHOT_MAX_AGE` seconds after USER sends no
snapshot and the checker reads the account again: a disable or a new password made
while a client sat between USER and PASS is seen.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from securetransport.audit import login_name_fields
from securetransport.auth import CertificateLogin, IFTPAvatar, PasswordLogin
from securetransport.ftp.session import Session
from securetransport.ftp.state import PendingLogin
from securetransport.passwords import PoolFull
from securetransport.policy import UserDecision, decide_user
from securetransport.replies import Reply
from securetransport.tls.verify import TrustStore, load_trust_store
from securetransport.userstore import Account, AccountSnapshot, valid_account_name

log = Logger(namespace="securetransport.ftp.login")

MAX_FAILED_LOGINS_PER_SESSION = 3
# How old (seconds since USER began reading) the account read at USER may be for PASS
# to use it; older, the checker reads the account again.
SNAPSHOT_MAX_AGE = 1.0
_NO_TRUST = load_trust_store(None, ())


class LoginCommands:
    def __init__(self, session: Session) -> None:
        self.session = session

    def ftp_USER(self, argument: str) -> Deferred[None] | None:
        session = self.session
        name = argument
        session.state.login_refused()  # a USER replaces any pending one
        certificate = session.certificate
        fingerprint = certificate.fingerprint if certificate is not None else None
        started = session.reactor.seconds()
        lookup = session.runtime.users.login_lookup(
            name if valid_account_name(name) else None, fingerprint
        )

        def found(result: tuple[Account | None, bool]) -> Deferred[None] | None:
            account, pinned = result
            return self._decide(AccountSnapshot(name, account, started), pinned)

        return lookup.addCallback(found)

    def _decide(self, snapshot: AccountSnapshot, pinned: bool) -> Deferred[None] | None:
        session = self.session
        name, account = snapshot.name, snapshot.account
        logged_name = login_name_fields(name, account is not None)
        if account is not None and not account.enabled:
            account = None
        tls = session.runtime.tls
        trust: TrustStore = tls.trust if tls is not None else _NO_TRUST
        decision = decide_user(
            name=name,
            account=account,
            facts=session.facts(),
            classes=session.config.classes,
            trust=trust,
            certificate_user=session.config.tls.certificate_user,
            now=datetime.now(UTC),
            pinned_elsewhere=pinned,
        )
        session.audit.user(decision, logged_name, session.state.protected)
        verdict = decision.verdict
        if decision.reply == Reply.LOGGED_IN_CERTIFICATE:
            assert verdict is not None and verdict.fingerprint is not None
            credentials = CertificateLogin(name, verdict.fingerprint, snapshot)
            return self._login(credentials, name, decision, "certificate", logged_name)
        if decision.reply == Reply.NEED_PASSWORD:
            session.state.awaiting_pass(PendingLogin(name, decision, logged_name, snapshot))
            session.reply(Reply.NEED_PASSWORD, decision.text)
            return None
        session.reply(Reply.NOT_LOGGED_IN, decision.text)
        return None

    def ftp_PASS(self, argument: str) -> Deferred[None] | None:
        state = self.session.state
        pending = state.pending
        assert pending is not None  # the command table lets PASS run only after a 331
        state.login_refused()  # back to CONNECTED until the portal says yes
        snapshot = pending.snapshot
        now = self.session.reactor.seconds()
        if snapshot is not None and now - snapshot.read_at > SNAPSHOT_MAX_AGE:
            snapshot = None  # too old to stand for the account now: the checker reads it
        credentials = PasswordLogin(pending.name.encode(), argument.encode(), snapshot)
        method = pending.decision.method or "password"
        return self._login(credentials, pending.name, pending.decision, method, pending.logged_name)

    def _login(
        self,
        credentials: ICredentials,
        name: str,
        decision: UserDecision,
        method: str,
        logged_name: dict[str, str | None],
    ) -> Deferred[None]:
        d = self.session.runtime.portal.login(credentials, None, IFTPAvatar)
        logged = d.addCallback(self._logged_in, name, decision, method)
        return logged.addErrback(self._failed, name, method, logged_name)

    def _logged_in(
        self,
        result: tuple[type[Interface], object, Callable[[], None]],
        name: str,
        decision: UserDecision,
        method: str,
    ) -> None:
        session = self.session
        _, provided, logout = result
        avatar = IFTPAvatar(provided)
        if session.closing:
            logout()
            return
        if method != "certificate" and session.runtime.guard.is_banned(
            session.peer, session.reactor.seconds()
        ):
            # The address was banned while this password was being checked.
            logout()
            session.reply(Reply.SERVICE_UNAVAILABLE, "Too many failed logins; closing")
            session.close()
            return
        session.logged_in(avatar, logout, name, decision.klass)
        session.audit.login_succeeded(
            name, method, decision.klass.name if decision.klass is not None else None
        )
        if method == "certificate":
            session.reply(Reply.LOGGED_IN_CERTIFICATE, decision.text)
        else:
            session.reply(Reply.LOGGED_IN, f"User {name} logged in")

    def _failed(
        self, failure: Failure, name: str, method: str, logged_name: dict[str, str | None]
    ) -> Deferred[None]:
        session = self.session
        if failure.check(PoolFull):
            session.reply(Reply.SERVICE_UNAVAILABLE, "Server busy; try again later")
            session.close()
            return defer.succeed(None)
        failure.trap(UnauthorizedLogin)
        if method == "certificate":
            # Never delayed, never counted (SPEC section 4): e.g. disabled since USER.
            session.reply(Reply.NOT_LOGGED_IN, "Login incorrect")
            return defer.succeed(None)
        now = session.reactor.seconds()
        guard = session.runtime.guard
        delay = guard.failure_delay(name, now) * session.runtime.failure_delay_base
        banned = guard.record_failure(session.peer, name, now)
        session.state.failed_logins += 1
        session.audit.login_failed(logged_name, method, banned)
        done: Deferred[None] = Deferred()

        def reply() -> None:
            if not session.closing:
                session.reply(Reply.NOT_LOGGED_IN, "Login incorrect")
                if session.state.failed_logins >= MAX_FAILED_LOGINS_PER_SESSION or banned:
                    session.reply(Reply.SERVICE_UNAVAILABLE, "Too many failed logins; closing")
                    session.close()
            done.callback(None)

        session.reactor.callLater(delay, reply)
        return done

    def ftp_ACCT(self, argument: str) -> None:
        self.session.reply(Reply.SUPERFLUOUS, "ACCT not needed")

    def ftp_REIN(self, argument: str) -> None:
        # Never during a transfer: REIN waits in the queue until the transfer has ended.
        session = self.session
        session.drop_data_setup()
        was_logged_in = session.state.logged_in
        session.log_out()
        session.state.rein()
        session.cancel_idle_timer()
        if was_logged_in:
            session.start_login_timer()
        session.reply(Reply.SERVICE_READY, "Session reset; log in again")
