"""The PostgreSQL user store (SPEC section 10): accounts, pins, SSH keys, failures and bans.

- Blocking, like every IUserStore: the service calls it from its database thread pool
  (AsyncUserStore), and its connections come from a bounded psycopg pool, so at most
  `max_size` queries run at once and none on the reactor.
- The schema is versioned (`schema_version`) and created or upgraded only by
  `securetransport db upgrade` (`upgrade()`: idempotent, under an advisory lock so two
  nodes upgrading at once do not collide). A store opened on an older schema refuses,
  naming that command; a newer one is refused too.
- Every change is announced in its own transaction with `pg_notify` on `CHANNEL`
  (delivered at commit), as JSON: `{"kind": "account", "name": ...}`,
  `{"kind": "failure", "key": ..., "name": ..., "at": ..., "node": ...}`,
  `{"kind": "ban", "key": ..., "until": ..., "node": ...}`. securetransport.cluster
  listens and applies them on every node.
- Failed logins are counted per ban key (an IPv4 address or an IPv6 /64) over every node
  and protocol: `record_failure` inserts the failure, counts those of the key within the
  window, and bans the key when the count reaches the limit, in one transaction.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from zope.interface import implementer

from securetransport.userstore import (
    Account,
    IUserStore,
    UserStoreError,
    _checked,
    normalize_fingerprint,
)

CHANNEL = "securetransport"
SCHEMA_VERSION = 1
UPGRADE_COMMAND = "securetransport db upgrade"
_LOCK_KEY = 0x5354_4442  # "STDB": the advisory lock held while upgrading

# version -> statements that take the schema from version - 1 to version
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE accounts (
            name TEXT PRIMARY KEY,
            password_hash TEXT,
            home TEXT NOT NULL DEFAULT '',
            read_only BOOLEAN NOT NULL DEFAULT FALSE,
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            changed TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE account_groups (
            name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            grp TEXT NOT NULL,
            PRIMARY KEY (name, grp)
        )""",
        """CREATE TABLE certificates (
            name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            fingerprint TEXT NOT NULL,
            PRIMARY KEY (name, fingerprint)
        )""",
        "CREATE INDEX certificates_by_fingerprint ON certificates (fingerprint)",
        """CREATE TABLE ssh_keys (
            name TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (name, key)
        )""",
        """CREATE TABLE login_failures (
            id BIGSERIAL PRIMARY KEY,
            key TEXT NOT NULL,
            name TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            node TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX login_failures_by_key ON login_failures (key, at)",
        "CREATE INDEX login_failures_by_time ON login_failures (at)",
        """CREATE TABLE bans (
            key TEXT PRIMARY KEY,
            until DOUBLE PRECISION NOT NULL
        )""",
    ),
}


class SchemaError(UserStoreError):
    """The database's schema is not the one this program needs."""


def _psycopg() -> Any:
    import psycopg

    return psycopg


def current_version(conn: Any) -> int:
    """The schema version of the database behind `conn`; 0 when there is none."""
    row = conn.execute("SELECT to_regclass('schema_version')").fetchone()
    if row is None or row[0] is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def upgrade(url: str) -> tuple[int, int]:
    """Create or upgrade the schema; returns (version before, version after). Idempotent."""
    psycopg = _psycopg()
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INTEGER PRIMARY KEY,"
                    " applied TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                before = current_version(conn)
                if before > SCHEMA_VERSION:
                    raise SchemaError(
                        f"the database schema is version {before}, newer than this"
                        f" program's {SCHEMA_VERSION}"
                    )
                for version in range(before + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                return before, max(before, SCHEMA_VERSION)
    except psycopg.Error as error:
        raise UserStoreError(f"user store: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@implementer(IUserStore)
class PostgreSQLUserStore:
    """IUserStore on PostgreSQL through a bounded connection pool. Blocking: use threads."""

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 4, node: str = "", timeout: float = 10
    ) -> None:
        psycopg = _psycopg()
        from psycopg_pool import ConnectionPool

        self.url = url
        self.node = node
        self._error = psycopg.Error
        self._integrity = psycopg.errors.UniqueViolation
        self.pool: Any = None
        try:
            self.pool = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                open=False,
                # a connection broken by a database restart is replaced, not used
                check=ConnectionPool.check_connection,
                kwargs={"connect_timeout": int(timeout)},
                name="securetransport-users",
            )
            self.pool.open(wait=True, timeout=timeout)
            with self.pool.connection() as conn:
                version = current_version(conn)
        except psycopg.Error as error:
            self.close()
            raise UserStoreError(f"cannot open user store: {_one_line(error)}") from None
        except Exception as error:  # noqa: BLE001 - psycopg_pool.PoolTimeout and the like
            self.close()
            raise UserStoreError(f"cannot open user store: {_one_line(error)}") from None
        if version != SCHEMA_VERSION:
            self.close()
            if version < SCHEMA_VERSION:
                raise SchemaError(
                    f"the user store schema is version {version}, older than this program's"
                    f" {SCHEMA_VERSION}: run `{UPGRADE_COMMAND}`"
                )
            raise SchemaError(
                f"the user store schema is version {version}, newer than this program's"
                f" {SCHEMA_VERSION}: upgrade securetransport"
            )

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, fn: Any) -> Any:
        """Run `fn(conn)` in one transaction; psycopg errors become UserStoreError."""
        if self.pool is None:
            raise UserStoreError("user store is closed")
        try:
            with self.pool.connection() as conn:
                with conn.transaction():
                    return fn(conn)
        except UserStoreError:
            raise
        except self._error as error:
            raise UserStoreError(f"user store: {_one_line(error)}") from None
        except Exception as error:  # noqa: BLE001 - pool timeouts, closed pool
            raise UserStoreError(f"user store: {_one_line(error)}") from None

    def _notify(self, conn: Any, payload: dict[str, Any]) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(payload)))

    _COLUMNS = "name, password_hash, home, read_only, enabled"

    @staticmethod
    def _read(conn: Any, row: tuple[Any, ...]) -> Account:
        name, password_hash, home, read_only, enabled = row
        groups = conn.execute(
            "SELECT grp FROM account_groups WHERE name = %s ORDER BY position", (name,)
        ).fetchall()
        pins = conn.execute(
            "SELECT fingerprint FROM certificates WHERE name = %s ORDER BY position", (name,)
        ).fetchall()
        keys = conn.execute(
            "SELECT key FROM ssh_keys WHERE name = %s ORDER BY position", (name,)
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
    def _write_details(conn: Any, account: Account) -> None:
        name = account.name
        for table in ("account_groups", "certificates", "ssh_keys"):
            conn.execute(f"DELETE FROM {table} WHERE name = %s", (name,))  # noqa: S608
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO account_groups (name, position, grp) VALUES (%s, %s, %s)",
                [(name, i, g) for i, g in enumerate(account.groups)],
            )
            cursor.executemany(
                "INSERT INTO certificates (name, position, fingerprint) VALUES (%s, %s, %s)",
                [(name, i, f) for i, f in enumerate(account.certificates)],
            )
            cursor.executemany(
                "INSERT INTO ssh_keys (name, position, key) VALUES (%s, %s, %s)",
                [(name, i, k) for i, k in enumerate(dict.fromkeys(account.ssh_keys))],
            )

    # -- IUserStore --------------------------------------------------------------------------
    def get(self, name: str) -> Account | None:
        """The account called `name`, or None."""

        def read(conn: Any) -> Account | None:
            row = conn.execute(
                f"SELECT {self._COLUMNS} FROM accounts WHERE name = %s", (name,)
            ).fetchone()
            return None if row is None else self._read(conn, row)

        return self._run(read)  # type: ignore[no-any-return]

    def list(self) -> builtins.list[Account]:
        """Every account, sorted by name."""

        def read(conn: Any) -> builtins.list[Account]:
            rows = conn.execute(
                f'SELECT {self._COLUMNS} FROM accounts ORDER BY name COLLATE "C"'
            ).fetchall()
            return [self._read(conn, row) for row in rows]

        return self._run(read)  # type: ignore[no-any-return]

    def add(self, account: Account) -> None:
        """Create an account; UserStoreError if the name exists or a field is invalid."""
        account = _checked(account)

        def write(conn: Any) -> None:
            try:
                with conn.transaction():
                    conn.execute(
                        f"INSERT INTO accounts ({self._COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
                        (
                            account.name,
                            account.password_hash,
                            account.home,
                            account.read_only,
                            account.enabled,
                        ),
                    )
            except self._integrity:
                raise UserStoreError(f"account exists: {account.name}") from None
            self._write_details(conn, account)
            self._notify(conn, {"kind": "account", "name": account.name})

        self._run(write)

    def update(self, account: Account) -> None:
        """Replace an existing account; UserStoreError if it does not exist."""
        account = _checked(account)

        def write(conn: Any) -> None:
            cursor = conn.execute(
                "UPDATE accounts SET password_hash = %s, home = %s, read_only = %s,"
                " enabled = %s, changed = now() WHERE name = %s",
                (
                    account.password_hash,
                    account.home,
                    account.read_only,
                    account.enabled,
                    account.name,
                ),
            )
            if cursor.rowcount == 0:
                raise UserStoreError(f"no such account: {account.name}")
            self._write_details(conn, account)
            self._notify(conn, {"kind": "account", "name": account.name})

        self._run(write)

    def remove(self, name: str) -> bool:
        """Delete an account (with its groups, pins and keys); True if it existed."""

        def write(conn: Any) -> bool:
            cursor = conn.execute("DELETE FROM accounts WHERE name = %s", (name,))
            if cursor.rowcount:
                self._notify(conn, {"kind": "account", "name": name})
            return bool(cursor.rowcount)

        return self._run(write)  # type: ignore[no-any-return]

    def find_by_fingerprint(self, fingerprint: str) -> builtins.list[str]:
        """Names of the accounts that pin `fingerprint` (any accepted spelling), sorted."""
        try:
            fingerprint = normalize_fingerprint(fingerprint)
        except ValueError:
            return []

        def read(conn: Any) -> builtins.list[str]:
            rows = conn.execute(
                'SELECT name FROM certificates WHERE fingerprint = %s ORDER BY name COLLATE "C"',
                (fingerprint,),
            ).fetchall()
            return [n for (n,) in rows]

        return self._run(read)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the pool; later calls raise UserStoreError."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    # -- failures and bans, shared by every node ----------------------------------------------
    def record_failure(
        self, key: str, name: str, at: float, window: float, max_failures: int
    ) -> float | None:
        """Count a failed login for ban key `key`; the ban's end if it is now banned."""

        def write(conn: Any) -> float | None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
            conn.execute(
                "INSERT INTO login_failures (key, name, at, node) VALUES (%s, %s, %s, %s)",
                (key, name, at, self.node),
            )
            self._notify(
                conn, {"kind": "failure", "key": key, "name": name, "at": at, "node": self.node}
            )
            (count,) = conn.execute(
                "SELECT count(*) FROM login_failures WHERE key = %s AND at > %s",
                (key, at - window),
            ).fetchone()
            if count < max_failures:
                return None
            until = at + window
            conn.execute(
                "INSERT INTO bans (key, until) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET until = greatest(bans.until, excluded.until)",
                (key, until),
            )
            conn.execute("DELETE FROM login_failures WHERE key = %s", (key,))
            self._notify(conn, {"kind": "ban", "key": key, "until": until, "node": self.node})
            return until

        return self._run(write)  # type: ignore[no-any-return]

    def active_bans(self, now: float) -> builtins.list[tuple[str, float]]:
        """(key, until) of the bans in force at `now`."""

        def read(conn: Any) -> builtins.list[tuple[str, float]]:
            rows = conn.execute(
                "SELECT key, until FROM bans WHERE until > %s ORDER BY key", (now,)
            ).fetchall()
            return [(k, float(u)) for k, u in rows]

        return self._run(read)  # type: ignore[no-any-return]

    def recent_failures(self, since: float) -> builtins.list[tuple[str, str, float]]:
        """(key, name, at) of the failures after `since`, oldest first."""

        def read(conn: Any) -> builtins.list[tuple[str, str, float]]:
            rows = conn.execute(
                "SELECT key, name, at FROM login_failures WHERE at > %s ORDER BY at", (since,)
            ).fetchall()
            return [(k, n, float(a)) for k, n, a in rows]

        return self._run(read)  # type: ignore[no-any-return]

    def prune(self, now: float, window: float) -> None:
        """Forget failures older than the window and bans that have ended."""

        def write(conn: Any) -> None:
            conn.execute("DELETE FROM login_failures WHERE at <= %s", (now - window,))
            conn.execute("DELETE FROM bans WHERE until <= %s", (now,))

        self._run(write)
