"""SSH logins on the shared cred portal (SPEC section 9).

- `SSHKeyLogin` / `SSHPasswordLogin`: credentials that carry the client address, so
  the checkers see it (conch's own userauth passes neither address nor mind), and the
  account as read for the request's class decision (`AccountSnapshot`), so neither the
  checker nor the realm reads it again.
- `SSHKeyChecker`: `ISSHPrivateKey` over the user store, in the verification pool.
  In order: the key blob parses; the signature algorithm is allowed (no `ssh-rsa`
  SHA-1, no DSA); the signature verifies (always checked when given, known account or
  not, so unknown names cost the same); the class for (name, groups, address) offers
  publickey; the account exists, is enabled and holds the key. A query without a
  signature for a good key raises `ValidPublicKey` (conch answers PK_OK).
- `SFTPUserAuthServer`: conch's userauth with the class's methods offered, the
  `publickey+password` partial success kept per connection, at most
  `MAX_AUTH_ATTEMPTS` failed attempts, failures counted in the shared per-address
  bans with the FTP delays, requests handled one at a time.
- `build_avatar`: the realm path for `IConchUser` (an `SFTPAvatar` on the account's
  confined filesystem).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.conch import error as conch_error
from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securetransport.auth import AccountId, snapshot_of
from securetransport.config import ClassConfig
from securetransport.passwords import PoolFull, VerificationPool
from securetransport.policy import SSHDecision, decide_ssh
from securetransport.runtime import IServedSession
from securetransport.sftp.subsystem import SFTPSessionChannel
from securetransport.userstore import (
    Account,
    AccountSnapshot,
    AsyncUserStore,
    ssh_key_fingerprint,
    valid_account_name,
)

log = Logger(namespace="securetransport.sftp.auth")

MAX_AUTH_ATTEMPTS: Final = 6
MAX_QUEUED_REQUESTS: Final = 4
# Signature algorithms accepted for user keys, strongest first (also server-sig-algs).
USER_SIGNATURE_ALGORITHMS: Final[tuple[bytes, ...]] = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


@implementer(IServedSession)
@dataclass(eq=False)
class SSHSessionInfo:
    """One SSH connection as the service, logins and the audit see it (the realm's mind)."""

    address: str
    session_id: str
    username: str | None = None
    avatar: Any = None
    method: str | None = None
    klass: ClassConfig | None = None
    protocol: str = "sftp"
    subsystems: set[Any] = field(default_factory=set)  # its SFTPServerProtocol instances
    partial: bytes | None = None  # the user whose key was a partial success (two factors)
    attempts: int = 0  # failed authentication attempts
    last_request: tuple[bytes | None, bytes | None] = (None, None)  # (user, service)
    transport: Any = field(default=None, repr=False)

    @property
    def transfer(self) -> Any:
        """Something (not None) while a file handle is open: draining waits for it."""
        return next((p for p in self.subsystems if p.openFiles), None)

    def shutdown(self) -> None:
        """The server is stopping: disconnect."""
        if self.transport is not None:
            self.transport.end("server shutting down")

    def account_gone(self) -> None:
        """The account was disabled or removed: disconnect."""
        if self.transport is not None:
            self.transport.end("account disabled")


@implementer(ISSHPrivateKey)
@dataclass(frozen=True)
class SSHKeyLogin:
    """ISSHPrivateKey credentials with the client address."""

    username: bytes
    algName: bytes  # noqa: N815 - conch's attribute names
    blob: bytes
    sigData: bytes | None  # noqa: N815
    signature: bytes | None
    address: str
    snapshot: AccountSnapshot | None = None


@implementer(IUsernamePassword)
@dataclass(frozen=True)
class SSHPasswordLogin:
    """IUsernamePassword credentials with the client address."""

    username: bytes
    password: bytes
    address: str
    snapshot: AccountSnapshot | None = None

    def checkPassword(self, password: bytes) -> bool:  # noqa: N802 - IUsernamePassword
        return password == self.password


def _name(raw: bytes) -> str | None:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if valid_account_name(name) else None


def _key_verdict(
    credentials: SSHKeyLogin, account: Account | None, decision: SSHDecision
) -> str | None:
    """Blocking: the account name if the key logs in, else None; ValidPublicKey for a
    good key queried without a signature. The signature is verified before the
    account is looked at, so every name costs the same."""
    if credentials.algName not in USER_SIGNATURE_ALGORITHMS:
        return None
    try:
        key = keys.Key.fromString(credentials.blob)
    except (keys.BadKeyError, ValueError, TypeError):
        return None
    signed_ok = False
    if credentials.signature is not None:
        try:
            signature_type = getNS(credentials.signature)[0]
            signed_ok = signature_type == credentials.algName and bool(
                key.verify(credentials.signature, credentials.sigData or b"")
            )
        except Exception:  # noqa: BLE001 - a malformed signature is a failed one
            signed_ok = False
    if "publickey" not in decision.offered or account is None or not account.enabled:
        return None
    fingerprint = ssh_key_fingerprint(credentials.blob)
    if fingerprint not in {ssh_key_fingerprint(k) for k in account.ssh_keys}:
        return None
    if credentials.signature is None:
        raise conch_error.ValidPublicKey()
    return account.name if signed_ok else None


@implementer(ICredentialsChecker)
class SSHKeyChecker:
    """Checks `ISSHPrivateKey` credentials against the keys in the user store."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(
        self, store: Any, pool: VerificationPool, classes: tuple[ClassConfig, ...]
    ) -> None:
        # The checks run in the verification pool: they use the blocking store there.
        self._store = store.store if isinstance(store, AsyncUserStore) else store
        self._pool = pool
        self._classes = classes

    def _check(self, credentials: Any) -> str | None:
        address = getattr(credentials, "address", None)
        name = _name(credentials.username)
        if address is None or name is None:
            return None
        snapshot = snapshot_of(credentials, name)
        account = snapshot.account if snapshot is not None else self._store.get(name)
        if account is not None and not account.enabled:
            account = None
        decision = decide_ssh(name=name, account=account, address=address, classes=self._classes)
        verdict = _key_verdict(credentials, account, decision)
        return AccountId(account) if verdict is not None and account is not None else None

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]  # noqa: N802
        d = self._pool.submit(self._check, credentials)

        def decide(name: str | None) -> str:
            if name is None:
                raise UnauthorizedLogin("key refused")
            return name

        return d.addCallback(decide)


class SFTPAvatar(ConchUser):
    """A logged-in SSH user: sessions open the `sftp` subsystem on the confined filesystem."""

    def __init__(self, account: Account, filesystem: Any, session: SSHSessionInfo | None) -> None:
        super().__init__()
        self.account = account
        self.filesystem = filesystem
        self.session = session
        self.channelLookup[b"session"] = SFTPSessionChannel

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:  # noqa: N802
        """No global requests (tcpip-forward and the like) are served."""
        return 0


def build_avatar(account: Account, filesystem: Any, mind: object) -> SFTPAvatar:
    """The realm path for IConchUser."""
    session = mind if isinstance(mind, SSHSessionInfo) else None
    return SFTPAvatar(account, filesystem, session)


def avatar_builders() -> dict[Any, Any]:
    """What `auth.make_portal` needs to hand out SFTP avatars."""
    return {IConchUser: build_avatar}


class SFTPUserAuthServer(userauth.SSHUserAuthServer):
    """ssh-userauth with the class's methods, bounded attempts and shared bans.

    The transport (`server.SFTPServerTransport`) provides `session` (SSHSessionInfo),
    `runtime` (ServerRuntime) and `login_succeeded()`; its login timer covers the key
    exchange and this service.
    """

    attemptsBeforeDisconnect = MAX_AUTH_ATTEMPTS - 1  # conch disconnects when exceeded
    passwordDelay = 0  # our own delays (the guard's) apply

    @property
    def _ssh(self) -> Any:
        """The transport: an `SFTPServerTransport` (typed loosely for conch's stubs)."""
        return self.transport

    # Kept on the connection, not on this service: a client may request ssh-userauth
    # again (paramiko does before every method), which makes a new service instance.

    @property
    def _partial(self) -> bytes | None:
        """The user whose key was a partial success on this connection."""
        return self._ssh.session.partial

    @_partial.setter
    def _partial(self, user: bytes | None) -> None:
        self._ssh.session.partial = user

    @property  # type: ignore[override]
    def loginAttempts(self) -> int:  # noqa: N802
        """Failed attempts on this connection (conch counts them on the service)."""
        return int(self._ssh.session.attempts)

    @loginAttempts.setter
    def loginAttempts(self, value: int) -> None:  # noqa: N802
        self._ssh.session.attempts = value

    def serviceStarted(self) -> None:  # noqa: N802
        session: SSHSessionInfo = self._ssh.session
        attempts, last = session.attempts, session.last_request
        super().serviceStarted()
        session.attempts = attempts  # conch's serviceStarted zeroes them: they are ours
        self.user, self.nextService = last
        if self._cancelLoginTimeout:  # the transport's own timer covers this
            self._cancelLoginTimeout.cancel()
            self._cancelLoginTimeout = None  # type: ignore[assignment]
        self.supportedAuthentications = []
        self._queue: deque[bytes] = deque()
        self._busy = False
        self.method = b"none"

    # requests, one at a time

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> None:  # type: ignore[override]  # noqa: N802
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            self._ssh.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, b"too many pending authentication requests"
            )
            return
        self._queue.append(packet)
        self._next()

    def _next(self) -> None:
        if self._busy or not self._queue or self._ssh is None:
            return
        packet = self._queue.popleft()
        self._busy = True
        d = self._handle(packet)
        d.addErrback(lambda f: log.failure("authentication request failed", f))
        d.addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self._busy = False
        self._next()

    def _handle(self, packet: bytes) -> Deferred[Any]:
        transport_ = self._ssh
        session: SSHSessionInfo = transport_.session
        runtime = transport_.runtime
        if getattr(transport_, "avatar", None) is not None:
            return succeed(None)  # already logged in: ignore, as RFC 4252 says
        try:
            user, next_service, method, rest = getNS(packet, 3)
        except Exception:  # noqa: BLE001 - a malformed request
            transport_.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad request")
            return succeed(None)
        if runtime.guard.is_banned(session.address, runtime.reactor.seconds()):
            transport_.sendDisconnect(
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many failed logins"
            )
            return succeed(None)
        if user != self.user or next_service != self.nextService:
            self._partial = None
        self.user, self.nextService, self.method = user, next_service, method
        self._ssh.session.last_request = (user, next_service)
        d = self._decide(user)
        d.addCallback(self._attempt, user, method, rest)
        d.addCallback(self._cbFinishedAuth)
        d.addErrback(self._ebMaybeBadAuth)
        d.addErrback(self._ebBadAuth)
        return d

    def _decide(self, user: bytes) -> Deferred[SSHDecision]:
        """The class decision on the account read now; the row is kept in `_snapshot`
        for this request's credentials (the only read of the request)."""
        runtime = self._ssh.runtime
        address = self._ssh.session.address
        name = _name(user)
        classes = runtime.config.classes
        self._snapshot: AccountSnapshot | None = None

        def decide(account: Account | None) -> SSHDecision:
            if name is not None:
                self._snapshot = AccountSnapshot(name, account, runtime.reactor.seconds())
            shown = name if name is not None else user.decode("utf-8", "replace")
            return decide_ssh(name=shown, account=account, address=address, classes=classes)

        if name is None:
            return succeed(decide(None))
        return runtime.users.get(name).addCallback(decide)

    def _attempt(self, decision: SSHDecision, user: bytes, method: bytes, rest: bytes) -> Any:
        self._decision = decision
        if self._partial is not None and self._partial == user:
            self.supportedAuthentications = [b"password"]
        else:
            self.supportedAuthentications = [m.encode() for m in decision.offered]
        if method == b"none":
            return fail(conch_error.ConchError("none"))
        if self.nextService != b"ssh-connection":
            return fail(UnauthorizedLogin("unknown service"))
        if method not in self.supportedAuthentications:
            return fail(UnauthorizedLogin("method not offered"))
        if method == b"publickey":
            return self._publickey(decision, user, rest)
        return self._password(user, rest)

    def _publickey(self, decision: SSHDecision, user: bytes, rest: bytes) -> Deferred[Any]:
        session: SSHSessionInfo = self._ssh.session
        portal = self._ssh.runtime.portal
        try:
            has_signature = rest[0]
            algorithm, blob, tail = getNS(rest[1:], 2)
            signature = getNS(tail)[0] if has_signature else None
        except Exception:  # noqa: BLE001 - malformed
            return fail(UnauthorizedLogin("malformed publickey request"))
        signed_data = None
        if signature is not None:
            signed_data = (
                NS(self._ssh.sessionID)
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + NS(user)
                + NS(self.nextService or b"")
                + NS(b"publickey")
                + b"\x01"
                + NS(algorithm)
                + NS(blob)
            )
        credentials = SSHKeyLogin(
            user, algorithm, blob, signed_data, signature, session.address, self._snapshot
        )
        d: Deferred[Any]
        if decision.key_then_password:
            checker = portal.checkers[ISSHPrivateKey]
            d = checker.requestAvatarId(credentials)
            d.addCallback(self._key_partial, user)
        else:
            d = portal.login(credentials, session, IConchUser)
        if signature is None:
            d.addErrback(self._ebCheckKey, rest[1:])
        else:
            d.addErrback(self._failed, user, "publickey", delay=False)
        return d

    def _key_partial(self, name: str, user: bytes) -> None:
        self._partial = user
        self.supportedAuthentications = [b"password"]
        self._ssh.runtime.audit.event(
            "login",
            session=self._ssh.session.session_id,
            user=name,
            method="publickey",
            result="partial",
            protocol="sftp",
        )
        raise conch_error.NotEnoughAuthentication()

    def _password(self, user: bytes, rest: bytes) -> Deferred[Any]:
        session: SSHSessionInfo = self._ssh.session
        try:
            if rest[:1] != b"\x00":
                return fail(UnauthorizedLogin("password change is not supported"))
            password = getNS(rest[1:])[0]
        except Exception:  # noqa: BLE001 - malformed
            return fail(UnauthorizedLogin("malformed password request"))
        credentials = SSHPasswordLogin(user, password, session.address, self._snapshot)
        d = self._ssh.runtime.portal.login(credentials, session, IConchUser)
        method = "publickey+password" if self._partial == user else "password"
        d.addErrback(self._failed, user, method, delay=True)
        return d

    def _failed(self, failure: Failure, user: bytes, method: str, delay: bool) -> Any:
        """Count a failed login like FTP does (delay for passwords), then fail."""
        if failure.check(PoolFull):
            self._ssh.sendDisconnect(
                transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"server busy; try again later"
            )
            return Failure(conch_error.IgnoreAuthentication())
        if not failure.check(UnauthorizedLogin):
            return failure
        runtime = self._ssh.runtime
        session: SSHSessionInfo = self._ssh.session
        name = user.decode("utf-8", "replace")
        now = runtime.reactor.seconds()
        wait = runtime.guard.failure_delay(name, now) * runtime.failure_delay_base if delay else 0.0
        banned = runtime.guard.record_failure(session.address, name, now)
        runtime.audit.event(
            "login",
            session=session.session_id,
            user=name if _name(user) else None,
            method=method,
            result="failure",
            client=session.address,
            banned=banned,
            protocol="sftp",
        )
        if banned:
            self._ssh.sendDisconnect(
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many failed logins"
            )
            return Failure(conch_error.IgnoreAuthentication())
        if wait <= 0:
            return failure
        d: Deferred[Any] = Deferred()
        runtime.reactor.callLater(wait, d.errback, failure)
        return d

    def _cbFinishedAuth(self, result: Any) -> None:  # noqa: N802
        interface, avatar, logout = result
        transport_ = self._ssh
        if transport_ is None or getattr(transport_, "closing", False):
            logout()
            return
        session: SSHSessionInfo = transport_.session
        runtime = transport_.runtime
        if self.method == b"password" and runtime.guard.is_banned(
            session.address, runtime.reactor.seconds()
        ):
            logout()
            transport_.sendDisconnect(
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"too many failed logins"
            )
            return
        method = self.method.decode("ascii", "replace")
        if self._partial == self.user and self.method == b"password":
            method = "publickey+password"
        decision = getattr(self, "_decision", None)
        session.username = avatar.account.name
        session.avatar = avatar
        session.method = method
        session.klass = decision.klass if decision else None
        super()._cbFinishedAuth((interface, avatar, logout))
        transport_.login_succeeded()
        runtime.audit.event(
            "login",
            session=session.session_id,
            user=session.username,
            method=method,
            result="success",
            protocol="sftp",
            **{"class": session.klass.name if session.klass else None},
        )
