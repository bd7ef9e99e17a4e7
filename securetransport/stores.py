"""Opening the user store a config names: SQLite (embedded) or PostgreSQL (several nodes).

Apart from both store modules, so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from securetransport.pgstore import PostgreSQLUserStore
from securetransport.userstore import IUserStore, SQLiteUserStore, UserStoreError


def open_user_store(url: str) -> IUserStore:
    """Open the store named by a URL: `sqlite:/absolute/path` (the folder is created), or
    `postgresql://...` (securetransport.pgstore; the schema must be up to date)."""
    if url.startswith("postgresql://"):
        return cast(IUserStore, PostgreSQLUserStore(url))
    scheme, sep, rest = url.partition(":")
    if not sep or scheme != "sqlite":
        raise UserStoreError(f"unsupported user store URL (want sqlite:/path): {url}")
    path = Path(rest)
    if not rest or not path.is_absolute():
        raise UserStoreError(f"user store path must be absolute: {url}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise UserStoreError(f"cannot create {path.parent}: {error.strerror}") from None
    return cast(IUserStore, SQLiteUserStore(path))
