"""Accounts and the user store behind an interface (SQLite is the embedded default)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zope.interface import Interface

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

    @property
    def home_folder(self) -> str:
        return self.home or self.name


class UserStoreError(Exception):
    """A user store operation failed (duplicate name, unknown account, bad URL)."""


class IUserStore(Interface):
    """Blocking account storage; call it from a thread, never from the reactor."""

    def get(name: str) -> Account | None:  # type: ignore[misc]
        """The account called `name`, or None."""

    def list() -> list[Account]:  # type: ignore[misc]
        """Every account, sorted by name."""

    def add(account: Account) -> None:  # type: ignore[misc]
        """Create an account; UserStoreError if the name exists."""

    def update(account: Account) -> None:  # type: ignore[misc]
        """Replace an existing account; UserStoreError if it does not exist."""

    def remove(name: str) -> bool:  # type: ignore[misc]
        """Delete an account; True if it existed."""

    def close() -> None:  # type: ignore[misc]
        """Release connections."""
