"""Typed, immutable configuration loaded from TOML (SPEC section 3).

`load_config(path)` returns a `Config` or raises `ConfigError`, whose
`problems` are one line each, starting with the key (`listen[1].port: ...`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TLSMode = Literal["explicit", "implicit"]
SSLRequirement = Literal["mandatory", "optional"]
CertificateCheck = Literal["verify", "off"]
LoginMethod = Literal["certificate", "password", "certificate+password"]
SessionReuse = Literal["required", "off"]
UploadMode = Literal["atomic", "resumable"]
CertificateUser = Literal["common-name", "email", "none"]


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerConfig:
    banner: str = "securetransport ready"
    home_root: Path = Path("var/home")
    users: str = "sqlite:var/users.sqlite3"  # store URL; the sqlite path is made absolute
    upload_mode: UploadMode = "atomic"
    umask: int = 0o027
    login_timeout: float = 30
    idle_timeout: float = 300
    data_timeout: float = 120
    max_sessions: int = 1000
    max_sessions_per_address: int = 50
    max_login_failures: int = 5
    ban_time: float = 300
    audit_log: Path | None = None
    xferlog: Path | None = None


@dataclass(frozen=True)
class ListenConfig:
    address: str = "127.0.0.1"
    port: int = 2121
    tls: TLSMode = "explicit"


@dataclass(frozen=True)
class PassiveConfig:
    ports: tuple[int, int] = (61000, 61999)  # inclusive range
    address: str = ""  # announced in PASV; empty: the control connection's local address


@dataclass(frozen=True)
class TLSConfig:
    certificate: Path | None = None
    private_key: Path | None = None
    client_ca: Path | None = None
    crl: tuple[Path, ...] = ()
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: str = ""
    certificate_user: CertificateUser = "none"

    @property
    def enabled(self) -> bool:
        """True when a server certificate and key are configured."""
        return self.certificate is not None and self.private_key is not None


@dataclass(frozen=True)
class ClassConfig:
    """One `[[class]]` table. A criterion that is None is absent (always holds)."""

    name: str
    users: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    addresses: tuple[IPNetwork, ...] | None = None
    ssl: SSLRequirement = "mandatory"
    client_certificate: CertificateCheck = "verify"
    login: tuple[LoginMethod, ...] = ("certificate", "password")
    session_reuse: SessionReuse = "required"


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: tuple[ListenConfig, ...] = (ListenConfig(),)
    passive: PassiveConfig = field(default_factory=PassiveConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    classes: tuple[ClassConfig, ...] = ()
    warnings: tuple[str, ...] = ()  # `warning: KEY: ...` lines found while loading


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML file at `path`; raise ConfigError listing every problem."""
    raise NotImplementedError
