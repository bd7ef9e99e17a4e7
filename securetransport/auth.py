"""Logging in with twisted.cred: credentials, checkers, the realm and the portal.

Two kinds of credentials reach the portal:

- `IUsernamePassword` (`PasswordLogin`, twisted's `UsernamePassword`): checked by
  `PasswordChecker` against the argon2id hash. An unknown or disabled account, or one
  without a password, costs the same dummy verification as a real one (SPEC section 4)
  and fails with UnauthorizedLogin.
- `ICertificateLogin` (`CertificateLogin`): the access policy has already decided
  that the client's certificate names the account; `CertificateChecker` confirms it
  exists, is enabled and, when it pins certificates, pins this fingerprint.

The account is read once per login. Credentials may carry an `AccountSnapshot` (FTP's
USER read it a moment before): the checker decides on that row instead of reading it
again. Without one, the checker reads the account itself (with the KDF in the same
pool job for passwords). A checker returns an `AccountId`, the account name (str)
carrying the row it accepted, and `FTPRealm` builds the `FTPAvatar` from that row: it
only makes the filesystem (the home folder, on the disk) in the store's pool. Store
failures (UserStoreError) and a full pool (PoolFull, SPEC: 421) come out of
`Portal.login` as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

from securetransport.passwords import VerificationPool, verify_password
from securetransport.userstore import (
    Account,
    AccountSnapshot,
    AsyncUserStore,
    normalize_fingerprint,
    valid_account_name,
)

if TYPE_CHECKING:
    from securetransport.userstore import BlockingUserStore

FilesystemFactory = Callable[[Account], Any]  # returns the account's IFilesystem
# Builds the avatar of another protocol (SFTP) for an interface the realm is asked for:
# (account, filesystem, mind) -> avatar. Called in the store's thread.
AvatarBuilder = Callable[[Account, Any, object], Any]


class IFTPAvatar(Interface):
    """A logged-in FTP user."""

    account = Attribute("Account: the account as read at login")
    filesystem = Attribute("IFilesystem: the user's confined view of their home")
    read_only = Attribute("bool: the account may not write")


@implementer(IFTPAvatar)
@dataclass(frozen=True)
class FTPAvatar:
    """The avatar FTPRealm hands out."""

    account: Account
    filesystem: Any  # IFilesystem

    @property
    def read_only(self) -> bool:
        return self.account.read_only


class ICertificateLogin(ICredentials):
    """A login by a client certificate that the access policy found names the account."""

    username = Attribute("str: the login name")
    fingerprint = Attribute("str: SHA-256 fingerprint of the certificate (any accepted form)")


@implementer(ICertificateLogin)
@dataclass(frozen=True)
class CertificateLogin:
    """ICertificateLogin credentials; `snapshot`: the account as just read, if it was."""

    username: str
    fingerprint: str
    snapshot: AccountSnapshot | None = None


@implementer(IUsernamePassword)
@dataclass(frozen=True)
class PasswordLogin:
    """IUsernamePassword credentials; `snapshot`: the account as just read, if it was."""

    username: bytes
    password: bytes
    snapshot: AccountSnapshot | None = None

    def checkPassword(self, password: bytes) -> bool:  # noqa: N802 - IUsernamePassword
        return hmac.compare_digest(password, self.password)


class AccountId(str):
    """An avatar ID: the account name, carrying the account row the checker accepted,
    so the realm builds the avatar without reading it again."""

    account: Account

    def __new__(cls, account: Account) -> AccountId:
        avatar_id = super().__new__(cls, account.name)
        avatar_id.account = account
        return avatar_id


def snapshot_of(credentials: Any, name: str | None) -> AccountSnapshot | None:
    """The account snapshot `credentials` carry for `name`, or None (read it now)."""
    snapshot = getattr(credentials, "snapshot", None)
    if isinstance(snapshot, AccountSnapshot) and name is not None and snapshot.name == name:
        return snapshot
    return None


def _usable(account: Account | None) -> Account | None:
    return account if account is not None and account.enabled else None


def _accepted(account: Account | None) -> AccountId:
    if account is None:
        raise UnauthorizedLogin("Login incorrect")
    return AccountId(account)


def _text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _blocking_store(store: AsyncUserStore | BlockingUserStore) -> Any:
    return store.store if isinstance(store, AsyncUserStore) else store


def as_async_store(
    store: AsyncUserStore | BlockingUserStore, pool: VerificationPool
) -> AsyncUserStore:
    """`store` itself if already asynchronous, else wrapped to run in `pool`'s threads."""
    if isinstance(store, AsyncUserStore):
        return store
    return AsyncUserStore(store, pool.threadpool, pool.reactor)


class VerifiedCredentials:
    """Recently verified (name, password, stored hash) triples, as HMAC keys.

    The key is HMAC-SHA256 under a per-process random secret, so the cache holds no
    password and nothing that can be tested offline. The stored hash is part of the
    key: a changed password (a new hash) misses the cache. Bounded, oldest first out.
    """

    def __init__(self, size: int = 4096, ttl: float = 600.0, clock: Any = time.monotonic) -> None:
        self._secret = secrets.token_bytes(32)
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._keys: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def _key(self, name: str, password: str | bytes, stored: str) -> bytes:
        secret = password.encode() if isinstance(password, str) else password
        message = b"\0".join((name.encode(), stored.encode(), secret))
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def seen(self, name: str, password: str | bytes, stored: str) -> bool:
        key = self._key(name, password, stored)
        with self._lock:
            added = self._keys.get(key)
            if added is None:
                return False
            if self._clock() - added > self._ttl:
                del self._keys[key]
                return False
            return True

    def add(self, name: str, password: str | bytes, stored: str) -> None:
        key = self._key(name, password, stored)
        with self._lock:
            self._keys[key] = self._clock()
            self._keys.move_to_end(key)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks IUsernamePassword credentials against the user store (argon2id).

    With a snapshot in the credentials, the password is checked against that row: a
    hit in the verified-credential cache is decided at once (one HMAC), otherwise the
    KDF runs as one job on the VerificationPool. Without one, the account is read and
    the password verified in one job there. Either way the work before login stays
    bounded, and a changed hash or a disabled account in the row refuses the login.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        store: AsyncUserStore | BlockingUserStore,
        pool: VerificationPool,
        cache: VerifiedCredentials | None = None,
    ) -> None:
        self._store = _blocking_store(store)
        self._pool = pool
        self._cache = cache if cache is not None else VerifiedCredentials()

    def _cached(self, account: Account | None, password: str | bytes) -> bool:
        """Was this password verified lately against this account's current hash?"""
        account = _usable(account)
        if account is None or account.password_hash is None:
            return False
        return self._cache.seen(account.name, password, account.password_hash)

    def _verify(self, account: Account | None, password: str | bytes) -> Account | None:
        """Blocking: `account` if it is enabled and the password matches its hash, else
        None. A missing account or hash costs the same dummy verification."""
        account = _usable(account)
        stored = account.password_hash if account is not None else None
        if account is not None and stored is not None and self._cached(account, password):
            return account
        if verify_password(stored, password) and account is not None and stored is not None:
            self._cache.add(account.name, password, stored)
            return account
        return None

    def _read_and_verify(self, name: str | None, password: str | bytes) -> Account | None:
        """Blocking: read the account, then `_verify` (one pool job)."""
        account = None
        if name is not None and valid_account_name(name):
            account = self._store.get(name)
        return self._verify(account, password)

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]  # str avatar IDs
        name = _text(credentials.username)
        password = credentials.password
        snapshot = snapshot_of(credentials, name)
        d: Deferred[Account | None]
        if snapshot is None:
            d = self._pool.submit(self._read_and_verify, name, password)
        elif self._cached(snapshot.account, password):
            d = succeed(snapshot.account)
        else:
            d = self._pool.submit(self._verify, snapshot.account, password)
        return d.addCallback(_accepted)


@implementer(ICredentialsChecker)
class CertificateChecker:
    """Confirms ICertificateLogin credentials against the account: the snapshot the
    credentials carry, or else the account read now."""

    credentialInterfaces = (ICertificateLogin,)

    def __init__(self, store: AsyncUserStore) -> None:
        self._store = store

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]  # str avatar IDs
        name = _text(credentials.username)
        try:
            fingerprint = normalize_fingerprint(credentials.fingerprint)
        except (ValueError, AttributeError, TypeError):
            return fail(UnauthorizedLogin("bad certificate fingerprint"))
        if name is None or not valid_account_name(name):
            return fail(UnauthorizedLogin("Login incorrect"))

        def decide(account: Account | None) -> str:
            account = _usable(account)
            if account is None:
                raise UnauthorizedLogin("Login incorrect")
            if account.certificates and fingerprint not in account.certificates:
                raise UnauthorizedLogin("certificate not pinned on this account")
            return AccountId(account)

        snapshot = snapshot_of(credentials, name)
        if snapshot is not None:
            return succeed(snapshot.account).addCallback(decide)
        return self._store.get(name).addCallback(decide)


@implementer(IRealm)
class FTPRealm:
    """Builds an FTPAvatar for an avatar ID: from the row an `AccountId` carries, or
    else from the account read now. The filesystem is made in the store's pool."""

    def __init__(
        self,
        filesystem_factory: FilesystemFactory,
        store: AsyncUserStore,
        avatar_builders: dict[Any, AvatarBuilder] | None = None,
    ) -> None:
        self._filesystem_factory = filesystem_factory
        self._store = store
        self._builders = dict(avatar_builders or {})

    def requestAvatar(  # type: ignore[override]
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> Deferred[tuple[Any, Any, Callable[[], None]]]:
        interface = next((i for i in interfaces if i is IFTPAvatar or i in self._builders), None)
        if interface is None:
            return fail(NotImplementedError("FTPRealm provides no avatar for these interfaces"))
        name = _text(avatarId)
        if name is None:
            return fail(UnauthorizedLogin("Login incorrect"))

        def build(account: Account | None) -> tuple[Any, Any, Callable[[], None]]:
            # In the store's thread: the filesystem factory makes the home folder if missing.
            if account is None or not account.enabled:
                raise UnauthorizedLogin("Login incorrect")
            filesystem = self._filesystem_factory(account)
            if interface is not IFTPAvatar:
                return (interface, self._builders[interface](account, filesystem, mind), _logout)
            return (IFTPAvatar, FTPAvatar(account, filesystem), _logout)

        if isinstance(avatarId, AccountId):
            if not avatarId.account.enabled:
                return fail(UnauthorizedLogin("Login incorrect"))
            return self._store.run(build, avatarId.account)
        return self._store.with_account(name, build)


def _logout() -> None:
    """Nothing to release: the filesystem holds no per-login resources."""


def make_portal(
    store: AsyncUserStore | BlockingUserStore,
    pool: VerificationPool,
    filesystem_factory: FilesystemFactory,
    extra_checkers: Sequence[Any] = (),
    avatar_builders: dict[Any, AvatarBuilder] | None = None,
) -> Portal:
    """A Portal with FTPRealm, PasswordChecker and CertificateChecker.

    A blocking IUserStore is wrapped in an AsyncUserStore on the pool's threads.
    `extra_checkers` and `avatar_builders` add other protocols' logins (SFTP: a key
    checker and the conch avatar) to the same portal.
    """
    async_store = as_async_store(store, pool)
    realm = FTPRealm(filesystem_factory, async_store, avatar_builders)
    checkers = [
        PasswordChecker(async_store, pool),
        CertificateChecker(async_store),
        *extra_checkers,
    ]
    return Portal(cast(IRealm, realm), cast(list[ICredentialsChecker], checkers))
