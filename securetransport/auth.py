"""Logging in with twisted.cred: credentials, checkers, the realm and the portal.

Two kinds of credentials reach the portal:

- `IUsernamePassword` (twisted's `UsernamePassword`): checked by `PasswordChecker`,
  which reads the account and verifies the password in the `VerificationPool`. An
  unknown or disabled account, or one without a password, costs the same dummy
  verification as a real one (SPEC section 4) and fails with UnauthorizedLogin.
- `ICertificateLogin` (`CertificateLogin`): the access policy has already decided
  that the client's certificate names the account; `CertificateChecker` re-reads the
  account and confirms it exists, is enabled and, when it pins certificates, pins
  this fingerprint.

Both return the account name (str) as avatar ID. `FTPRealm` turns it into an
`FTPAvatar` carrying the account and its filesystem. Store failures (UserStoreError)
and a full pool (PoolFull, SPEC: 421) come out of `Portal.login` as they are.
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
from twisted.internet.defer import Deferred, fail
from zope.interface import Attribute, Interface, implementer

from securetransport.passwords import VerificationPool, verify_password
from securetransport.userstore import (
    Account,
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
    """ICertificateLogin credentials."""

    username: str
    fingerprint: str


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

    The account is read and the password verified in one job on the
    VerificationPool, so the work before login stays bounded.
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

    def _check(self, name: str | None, password: str | bytes) -> str | None:
        """In a pool thread: the account name if the password is right, else None.

        The account row is read on every login, so a changed password or a disabled
        account takes effect at once; only the KDF run is skipped on a cache hit.
        """
        account = None
        if name is not None and valid_account_name(name):
            account = self._store.get(name)
        usable = account is not None and account.enabled
        stored = account.password_hash if account is not None and usable else None
        if account is not None and usable and stored is not None:
            if self._cache.seen(account.name, password, stored):
                return str(account.name)
        if verify_password(stored, password) and account is not None and usable:
            assert stored is not None
            self._cache.add(account.name, password, stored)
            return str(account.name)
        return None

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:  # type: ignore[override]  # str avatar IDs
        d = self._pool.submit(self._check, _text(credentials.username), credentials.password)

        def decide(name: str | None) -> str:
            if name is None:
                raise UnauthorizedLogin("Login incorrect")
            return name

        return d.addCallback(decide)


@implementer(ICredentialsChecker)
class CertificateChecker:
    """Confirms ICertificateLogin credentials against the current account."""

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
            if account is None or not account.enabled:
                raise UnauthorizedLogin("Login incorrect")
            if account.certificates and fingerprint not in account.certificates:
                raise UnauthorizedLogin("certificate not pinned on this account")
            return account.name

        return self._store.get(name).addCallback(decide)


@implementer(IRealm)
class FTPRealm:
    """Builds an FTPAvatar for an account name, re-reading the account."""

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
