"""Accounts and the user store behind an interface (SQLite is the embedded default)."""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

_T = TypeVar("_T")

ACCOUNT_NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def valid_account_name(name: str) -> bool:
    """SPEC section 3: `[A-Za-z0-9._@+-]{1,64}`, not starting with a dot."""
    return ACCOUNT_NAME.fullmatch(name) is not None and not name.startswith(".")


@dataclass(frozen=True)
class Account:
    name: str
    password_hash: str | None = None  # argon2id PHC string; None: no password login
    groups: tuple[str, ...] = ()
    home: str = ""  # relative to server.home_root; empty means the account name
    certificates: tuple[str, ...] = ()  # pinned SHA-256 fingerprints, 64 lowercase hex digits
    read_only: bool = False
    enabled: bool = True
    ssh_keys: tuple[str, ...] = ()  # OpenSSH public keys ("TYPE BASE64 [COMMENT]"), SPEC 9

    @property
    def home_folder(self) -> str:
        return self.home or self.name


@dataclass(frozen=True)
class AccountSnapshot:
    """The account called `name` as one read found it (None: no such account).

    A login reads the account once and hands this on (USER to PASS, checker to realm),
    so the later steps decide on the same row instead of reading it again.
    """

    name: str
    account: Account | None
    read_at: float = 0.0  # reactor seconds when the read started


class UserStoreError(Exception):
    """A user store operation failed (duplicate name, unknown account, bad URL)."""


class IUserStore(Interface):
    """Blocking account storage; call it from a thread, never from the reactor."""

    def get(name: str) -> Account | None:
        """The account called `name`, or None."""

    def list() -> list[Account]:
        """Every account, sorted by name."""

    def add(account: Account) -> None:
        """Create an account; UserStoreError if the name exists."""

    def update(account: Account) -> None:
        """Replace an existing account; UserStoreError if it does not exist."""

    def remove(name: str) -> bool:
        """Delete an account; True if it existed."""

    def find_by_fingerprint(fingerprint: str) -> builtins.list[str]:
        """The names of the accounts (enabled or not) that pin `fingerprint`."""

    def close() -> None:
        """Release connections."""


# --- fingerprints -------------------------------------------------------------------

_FINGERPRINT_PLAIN = re.compile(r"[0-9A-Fa-f]{64}")
_FINGERPRINT_COLONS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lowercase hex digits.

    Accepts 64 hex digits in either case, plain or as colon-separated pairs;
    ValueError otherwise.
    """
    text = text.strip()
    if _FINGERPRINT_PLAIN.fullmatch(text) or _FINGERPRINT_COLONS.fullmatch(text):
        return text.replace(":", "").lower()
    raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {text[:100]!r}")


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of the certificate's DER encoding, 64 lowercase hex digits."""
    return cert.fingerprint(hashes.SHA256()).hex()


def ssh_key_blob(line: str) -> bytes:
    """The wire blob of an OpenSSH public key line (`TYPE BASE64 [COMMENT]`).

    ValueError when the line is not one: the base64 must decode and start with TYPE.
    """
    parts = line.strip().split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line (TYPE BASE64 [COMMENT])")
    try:
        blob = base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("not an OpenSSH public key: bad base64") from None
    if len(blob) < 4:
        raise ValueError("not an OpenSSH public key: too short")
    length = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + length] != parts[0].encode("ascii", "replace"):
        raise ValueError(f"not an OpenSSH public key: the key is not of type {parts[0][:40]!r}")
    return blob


def ssh_key_fingerprint(key: str | bytes) -> str:
    """OpenSSH's `SHA256:` fingerprint (unpadded base64) of a key line or wire blob."""
    blob = ssh_key_blob(key) if isinstance(key, str) else key
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def normalize_ssh_key(line: str) -> str:
    """`TYPE BASE64 [COMMENT]` with single spaces; ValueError if it is not a key line."""
    ssh_key_blob(line)
    parts = line.strip().split(None, 2)
    return " ".join(parts)


def normalize_ssh_fingerprint(text: str) -> str:
    """`SHA256:` + 43 base64 characters; the `SHA256:` prefix may be left out."""
    text = text.strip()
    body = text[7:] if text[:7].upper() == "SHA256:" else text
    body = body.rstrip("=")
    if not _SSH_FINGERPRINT.fullmatch(body):
        raise ValueError(f"not an SSH SHA-256 fingerprint (SHA256:BASE64): {text[:100]!r}")
    return "SHA256:" + body


_SSH_FINGERPRINT = re.compile(r"[A-Za-z0-9+/]{43}")


# --- home folders -------------------------------------------------------------------


def normalize_home(home: str) -> str:
    """A home folder relative to `server.home_root`, normalized (`a/./b/` -> `a/b`).

    Empty means the account name. UserStoreError for an absolute path, a `..`
    component or a NUL: a home always lies below home_root.
    """
    if "\0" in home:
        raise UserStoreError("home folder contains NUL")
    path = PurePosixPath(home)
    if path.is_absolute():
        raise UserStoreError(f"home folder must be relative to home_root: {home}")
    if ".." in path.parts:
        raise UserStoreError(f"home folder must not contain '..': {home}")
    normalized = str(path)
    return "" if normalized == "." else normalized


def _checked(account: Account) -> Account:
    """The account with groups and pins deduplicated and normalized, or UserStoreError."""
    if not valid_account_name(account.name):
        raise UserStoreError(f"invalid account name: {account.name!r}")
    try:
        pins = tuple(dict.fromkeys(normalize_fingerprint(f) for f in account.certificates))
    except ValueError as error:
        raise UserStoreError(str(error)) from None
    groups = tuple(dict.fromkeys(account.groups))
    for group in groups:
        if not group or "\0" in group:
            raise UserStoreError(f"invalid group name: {group!r}")
    try:
        keys = tuple(normalize_ssh_key(k) for k in account.ssh_keys)
    except ValueError as error:
        raise UserStoreError(str(error)) from None
    unique: dict[str, str] = {}
    for key in keys:
        unique.setdefault(ssh_key_fingerprint(key), key)
    return replace(
        account,
        groups=groups,
        certificates=pins,
        home=normalize_home(account.home),
        ssh_keys=tuple(unique.values()),
    )


# --- SQLite -------------------------------------------------------------------------

_SCHEMA_VERSION = 2  # 2: ssh_keys (a version-1 file gains the table when opened)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    home TEXT NOT NULL DEFAULT '',
    read_only INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    grp TEXT NOT NULL,
    PRIMARY KEY (name, grp)
);
CREATE TABLE IF NOT EXISTS certificates (
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (name, fingerprint)
);
CREATE INDEX IF NOT EXISTS certificates_by_fingerprint ON certificates (fingerprint);
CREATE TABLE IF NOT EXISTS ssh_keys (
    name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    PRIMARY KEY (name, fingerprint)
);
"""


@implementer(IUserStore)
class SQLiteUserStore:
    """IUserStore on a SQLite file (WAL mode), safe to call from several threads.

    One connection, serialized by a lock; reads and writes run in explicit
    transactions so an account is always read whole. Blocking: call from a thread.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            if not self.path.exists():
                # Hashes live here: create the file (and so its -wal/-shm) private.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            with self._transaction(write=True) as conn:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > _SCHEMA_VERSION:
                    raise UserStoreError(
                        f"user store {self.path} has schema version {version}, newer than"
                        f" this program's {_SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except (OSError, sqlite3.Error, UserStoreError) as error:
            self.close()
            if isinstance(error, UserStoreError):
                raise
            raise UserStoreError(f"cannot open user store {self.path}: {error}") from None

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise UserStoreError("user store is closed")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _read(conn: sqlite3.Connection, row: tuple[Any, ...]) -> Account:
        name, password_hash, home, read_only, enabled = row
        groups = conn.execute(
            "SELECT grp FROM groups WHERE name = ? ORDER BY rowid", (name,)
        ).fetchall()
        pins = conn.execute(
            "SELECT fingerprint FROM certificates WHERE name = ? ORDER BY rowid", (name,)
        ).fetchall()
        keys = conn.execute(
            "SELECT public_key FROM ssh_keys WHERE name = ? ORDER BY rowid", (name,)
        ).fetchall()
        return Account(
            name=name,
            password_hash=password_hash,
            groups=tuple(g for (g,) in groups),
            home=home,
            certificates=tuple(f for (f,) in pins),
            read_only=bool(read_only),
            enabled=bool(enabled),
            ssh_keys=tuple(k for (k,) in keys),
        )

    @staticmethod
    def _write_details(conn: sqlite3.Connection, account: Account) -> None:
        conn.execute("DELETE FROM groups WHERE name = ?", (account.name,))
        conn.execute("DELETE FROM certificates WHERE name = ?", (account.name,))
        conn.execute("DELETE FROM ssh_keys WHERE name = ?", (account.name,))
        conn.executemany(
            "INSERT INTO groups (name, grp) VALUES (?, ?)",
            [(account.name, g) for g in account.groups],
        )
        conn.executemany(
            "INSERT INTO certificates (name, fingerprint) VALUES (?, ?)",
            [(account.name, f) for f in account.certificates],
        )
        conn.executemany(
            "INSERT INTO ssh_keys (name, fingerprint, public_key) VALUES (?, ?, ?)",
            [(account.name, ssh_key_fingerprint(k), k) for k in account.ssh_keys],
        )

    _COLUMNS = "name, password_hash, home, read_only, enabled"

    def get(self, name: str) -> Account | None:
        """The account called `name`, or None."""
        try:
            with self._transaction() as conn:
                row = conn.execute(
                    f"SELECT {self._COLUMNS} FROM accounts WHERE name = ?", (name,)
                ).fetchone()
                return None if row is None else self._read(conn, row)
        except sqlite3.Error as error:
            raise UserStoreError(f"user store: {error}") from None

    def list(self) -> builtins.list[Account]:
        """Every account, sorted by name."""
        try:
            with self._transaction() as conn:
                rows = conn.execute(
                    f"SELECT {self._COLUMNS} FROM accounts ORDER BY name"
                ).fetchall()
                return [self._read(conn, row) for row in rows]
        except sqlite3.Error as error:
            raise UserStoreError(f"user store: {error}") from None

    def add(self, account: Account) -> None:
        """Create an account; UserStoreError if the name exists or a field is invalid."""
        account = _checked(account)
        try:
            with self._transaction(write=True) as conn:
                conn.execute(
                    f"INSERT INTO accounts ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (
                        account.name,
                        account.password_hash,
                        account.home,
                        int(account.read_only),
                        int(account.enabled),
                    ),
                )
                self._write_details(conn, account)
        except sqlite3.IntegrityError:
            raise UserStoreError(f"account exists: {account.name}") from None
        except sqlite3.Error as error:
            raise UserStoreError(f"user store: {error}") from None

    def update(self, account: Account) -> None:
        """Replace an existing account; UserStoreError if it does not exist."""
        account = _checked(account)
        try:
            with self._transaction(write=True) as conn:
                cursor = conn.execute(
                    "UPDATE accounts SET password_hash = ?, home = ?, read_only = ?, enabled = ?"
                    " WHERE name = ?",
                    (
                        account.password_hash,
                        account.home,
                        int(account.read_only),
                        int(account.enabled),
                        account.name,
                    ),
                )
                if cursor.rowcount == 0:
                    raise UserStoreError(f"no such account: {account.name}")
                self._write_details(conn, account)
        except sqlite3.Error as error:
            raise UserStoreError(f"user store: {error}") from None

    def remove(self, name: str) -> bool:
        """Delete an account (with its groups and pins); True if it existed."""
        try:
            with self._transaction(write=True) as conn:
                cursor = conn.execute("DELETE FROM accounts WHERE name = ?", (name,))
                return cursor.rowcount > 0
        except sqlite3.Error as error:
            raise UserStoreError(f"user store: {error}") from None

    def find_by_fingerprint(self, fingerprint: str) -> builtins.list[str]:
        """Names of the accounts that pin `fingerprint` (any accepted spelling), sorted."""
        try:
            fingerprint = normalize_fingerprint(fingerprint)
        except ValueError:
            return []
        try:
            with self._transaction() as conn:
                rows = conn.execute(
                    "SELECT name FROM certificates WHERE fingerprint = ? ORDER BY name",
                    (fingerprint,),
                ).fetchall()
                return [name for (name,) in rows]
        except sqlite3.Error as error:
            raise UserStoreError(f"user store: {error}") from None

    def close(self) -> None:
        """Close the connection; later calls raise UserStoreError."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


if TYPE_CHECKING:
    # What the blocking-store parameters accept (mypy has no zope plugin here).
    BlockingUserStore: TypeAlias = IUserStore | SQLiteUserStore


# --- non-blocking wrapper -----------------------------------------------------------


def pinned_by_any_account(store: IUserStore, fingerprint: str | None) -> bool:
    """Blocking: does any account, enabled or disabled, pin `fingerprint`?
    (`policy.decide_user`'s `pinned_elsewhere`: such a certificate never names an
    account by its attributes; disabling the account that pins it changes nothing.)"""
    if not fingerprint:
        return False
    return bool(store.find_by_fingerprint(fingerprint))


def login_lookup(
    store: IUserStore, name: str | None, fingerprint: str | None
) -> tuple[Account | None, bool]:
    """Blocking: what FTP's USER needs, in one job: the account called `name` (None when
    `name` is None or there is none) and whether any account pins `fingerprint`."""
    account = store.get(name) if name is not None else None
    return account, pinned_by_any_account(store, fingerprint)


class AsyncUserStore:
    """Runs a blocking IUserStore in a thread pool; every method returns a Deferred."""

    def __init__(self, store: BlockingUserStore, threadpool: ThreadPool, reactor: Any) -> None:
        self.store: Any = store  # Any: mypy cannot call zope interface methods
        self.threadpool = threadpool
        self.reactor = reactor

    def _run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args)

    def get(self, name: str) -> Deferred[Account | None]:
        return self._run(self.store.get, name)

    def with_account(self, name: str, fn: Callable[[Account | None], _T]) -> Deferred[_T]:
        """Read the account and call `fn` with it, both in the pool (fn may touch the disk)."""
        return self._run(lambda: fn(self.store.get(name)))

    def run(self, fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Call `fn(*args)` in the pool: work on an account already read (its home folder)."""
        return self._run(fn, *args)

    def login_lookup(
        self, name: str | None, fingerprint: str | None
    ) -> Deferred[tuple[Account | None, bool]]:
        """`login_lookup` in one pool job; none when there is nothing to look up."""
        if name is None and not fingerprint:
            return succeed((None, False))
        return self._run(login_lookup, self.store, name, fingerprint)

    def pinned_by_any_account(self, fingerprint: str | None) -> Deferred[bool]:
        return self._run(pinned_by_any_account, self.store, fingerprint)

    def list(self) -> Deferred[builtins.list[Account]]:
        return self._run(self.store.list)

    def add(self, account: Account) -> Deferred[None]:
        return self._run(self.store.add, account)

    def update(self, account: Account) -> Deferred[None]:
        return self._run(self.store.update, account)

    def remove(self, name: str) -> Deferred[bool]:
        return self._run(self.store.remove, name)

    def find_by_fingerprint(self, fingerprint: str) -> Deferred[builtins.list[str]]:
        """Accounts pinning `fingerprint`."""
        return self._run(self.store.find_by_fingerprint, fingerprint)
