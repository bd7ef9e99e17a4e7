"""Typed, immutable configuration loaded from TOML (SPEC section 3).

`load_config(path)` returns a `Config` or raises `ConfigError`, whose
`problems` are one line each, starting with the key (`listen[1].port: ...`).
`config_from_dict` does the same for an already parsed document, without I/O.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from OpenSSL import SSL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TLSMode = Literal["explicit", "implicit"]
SSLRequirement = Literal["mandatory", "optional"]
CertificateCheck = Literal["verify", "off"]
LoginMethod = Literal[
    "certificate", "password", "certificate+password", "publickey", "publickey+password"
]
ListenProtocol = Literal["ftp", "sftp"]
_SSH_ONLY = frozenset({"publickey", "publickey+password"})  # login methods FTP never uses
SessionReuse = Literal["required", "account", "off"]
UploadMode = Literal["atomic", "resumable"]
CertificateUser = Literal["common-name", "email", "none"]
TLSVersion = Literal["TLSv1.2", "TLSv1.3"]
Role = Literal["server", "edge"]


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one line per problem.

    `warnings` holds the `warning: KEY: ...` lines found before giving up.
    """

    def __init__(self, problems: list[str], warnings: Iterable[str] = ()) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = tuple(warnings)


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
    allow_root: bool = False  # keep serving as root when twistd was not told --uid/--gid
    workers: int = 1  # reactor processes sharing the listeners (securetransport.workers)
    shutdown_grace: float = 30  # seconds SIGTERM lets transfers in progress finish
    role: Role = "server"  # "edge": a relay in the DMZ (SPEC section 8)


@dataclass(frozen=True)
class ListenConfig:
    address: str = "127.0.0.1"
    port: int = 2121
    tls: TLSMode = "explicit"
    protocol: ListenProtocol = "ftp"  # "sftp": SSH (SPEC section 9); `tls` does not apply


@dataclass(frozen=True)
class SSHConfig:
    host_keys: tuple[Path, ...] = ()  # OpenSSH private key files


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

    @property
    def has_criteria(self) -> bool:
        """False for a class that matches every login."""
        return not (self.users is None and self.groups is None and self.addresses is None)


@dataclass(frozen=True)
class ProxyConfig:
    """`[proxy]`: who may send a PROXY protocol header (securetransport.proxy)."""

    trusted: tuple[IPNetwork, ...] = ()  # the `from` key
    required: bool = False  # refuse connections from other addresses
    timeout: float = 3.0  # seconds for the header (SPEC section 10; not a key)


@dataclass(frozen=True)
class MetricsConfig:
    """`[metrics]`: the Prometheus `/metrics` and `/health` endpoint (securetransport.metrics)."""

    address: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True)
class EdgeConfig:
    """One `[[edge]]` of a server: an edge's link listener the server dials (SPEC section 8)."""

    name: str
    address: str
    port: int
    certificate: Path  # the server's link certificate (PEM, chain may follow)
    private_key: Path
    ca: Path  # the edge's link certificate must chain to it


@dataclass(frozen=True)
class LinkConfig:
    """`[link]` of an edge: where it listens for its server's link connections."""

    address: str
    port: int
    certificate: Path  # the edge's link certificate
    private_key: Path
    ca: Path  # the server's link certificate must chain to it


# What an edge config may set (SPEC section 8): what is physically the edge's.
EDGE_SERVER_KEYS = frozenset({"role", "allow_root"})
EDGE_TLS_KEYS = frozenset({"certificate", "private_key"})
EDGE_SECTIONS = frozenset({"server", "listen", "passive", "tls", "link", "metrics"})
EDGE_ONLY_TEXT = "set on the server; an edge applies the server's"


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: tuple[ListenConfig, ...] = (ListenConfig(),)
    passive: PassiveConfig = field(default_factory=PassiveConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    classes: tuple[ClassConfig, ...] = ()
    proxy: ProxyConfig | None = None  # None: no PROXY header is read
    metrics: MetricsConfig | None = None  # None: no metrics endpoint
    ssh: SSHConfig = field(default_factory=SSHConfig)
    edges: tuple[EdgeConfig, ...] = ()  # a server's edges (SPEC section 8)
    link: LinkConfig | None = None  # an edge's link listener
    warnings: tuple[str, ...] = ()  # `warning: KEY: ...` lines found while loading


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
MAX_CONFIG_BYTES = 1 << 20


def load_config(
    path: str | Path, *, ephemeral_range_file: Path | None = EPHEMERAL_RANGE_FILE
) -> Config:
    """Read and validate the TOML file at `path`; raise ConfigError listing every problem.

    Relative paths in the file are resolved against the file's (real) folder.
    `ephemeral_range_file` is read to warn about passive ports the kernel also uses
    for outgoing connections; None skips that warning.
    """
    path = Path(path)
    data = _read_toml(path)
    ephemeral = read_port_range(ephemeral_range_file) if ephemeral_range_file else None
    return config_from_dict(
        data,
        base=path.absolute().parent.resolve(),
        path=path.absolute(),
        ephemeral_ports=ephemeral,
    )


def config_from_dict(
    data: Mapping[str, object],
    base: Path,
    *,
    path: Path | None = None,
    ephemeral_ports: tuple[int, int] | None = None,
) -> Config:
    """Validate a parsed TOML document; relative paths are resolved against `base`.

    `ephemeral_ports` is the kernel's ephemeral port range (for a warning), if known.
    Raises ConfigError with every problem found.
    """
    return _Builder(base).build(data, path, ephemeral_ports)


def read_port_range(path: Path) -> tuple[int, int] | None:
    """The two numbers of a file like /proc/sys/net/ipv4/ip_local_port_range, or None."""
    try:
        words = path.read_text(encoding="ascii").split()
        low, high = int(words[0]), int(words[1])
    except (OSError, ValueError, IndexError):
        return None
    return (low, high) if 0 < low <= high <= 65535 else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except ValueError as error:  # e.g. a NUL in the name
        raise ConfigError([f"{path}: cannot read: {error}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not valid UTF-8 (byte {error.start + 1})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: {_toml_message(str(error))}"]) from None


_TOML_POSITION = re.compile(r"(?s)(.*) \(at line (\d+), column (\d+)\)")
_TOML_END = re.compile(r"(?s)(.*) \(at end of document\)")


def _toml_message(message: str) -> str:
    """`line L, column C: WHAT` from tomllib's `WHAT (at line L, column C)`."""
    match = _TOML_POSITION.fullmatch(message)
    if match:
        return f"line {match[2]}, column {match[3]}: {match[1]}"
    match = _TOML_END.fullmatch(message)
    if match:
        return f"at end of file: {match[1]}"
    return message


# --- Values -------------------------------------------------------------------------


class _Invalid(Exception):
    """A bad value: `problems` are (key suffix, message) pairs, e.g. ("[2]", "...")."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"must be true or false, got {_show(value)}")
    return value


def _bad(message: str) -> _Invalid:
    return _Invalid(("", message))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    """A key as TOML would write it: bare when it can be, quoted otherwise."""
    return name if _BARE_KEY.fullmatch(name) else _quote(name)


def _quote(text: str, limit: int = 80) -> str:
    """A double-quoted, escaped, printable form of `text`."""
    if len(text) > limit:
        text = text[:limit] + "..."
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in quoted)


# --- which names and addresses two classes may share (for the groups warning) -----------

_GLOB_SPECIAL = re.compile(r"[*?\[\]]")
_EVERY_NETWORK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("0.0.0.0/0"),
    ipaddress.IPv6Network("::/0"),
)


def _literal_ends(pattern: str) -> tuple[str, str] | None:
    """The literal text a glob's matches surely start and end with; None for no wildcard."""
    specials = [m.start() for m in _GLOB_SPECIAL.finditer(pattern)]
    if not specials:
        return None
    return pattern[: specials[0]], pattern[specials[-1] + 1 :]


def _patterns_disjoint(first: str, second: str) -> bool:
    """True only when no name matches both globs (judged by their literal ends)."""
    ends, other_ends = _literal_ends(first), _literal_ends(second)
    if ends is None:
        return not fnmatch.fnmatchcase(first, second)
    if other_ends is None:
        return not fnmatch.fnmatchcase(second, first)
    (prefix, suffix), (other_prefix, other_suffix) = ends, other_ends
    return not (
        (prefix.startswith(other_prefix) or other_prefix.startswith(prefix))
        and (suffix.endswith(other_suffix) or other_suffix.endswith(suffix))
    )


def _networks(klass: ClassConfig) -> tuple[IPNetwork, ...]:
    return _EVERY_NETWORK if klass.addresses is None else klass.addresses


def _disjoint(entry: ClassConfig, other: ClassConfig) -> bool:
    """True only when `other` surely matches no non-member of `entry`'s groups that
    `entry`'s users and addresses admit."""
    if other.groups is not None and entry.groups is not None:
        if set(other.groups) <= set(entry.groups):
            return True  # who is in one of these groups got `entry` already
    if entry.users is not None and other.users is not None:
        if all(_patterns_disjoint(a, b) for a in entry.users for b in other.users):
            return True
    return not any(
        a.version == b.version and a.overlaps(b) for a in _networks(entry) for b in _networks(other)
    )


def _within(inner: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _covers(other: ClassConfig, entry: ClassConfig) -> bool:
    """True only when `other` surely matches every name and address `entry` admits, for
    any groups: it has no groups criterion, each pattern of `entry` is one of its own (or
    it has "*" or no users criterion), each network of `entry` lies in one of its own."""
    if other.groups is not None:
        return False
    if other.users is not None and "*" not in other.users:
        if entry.users is None or not set(entry.users) <= set(other.users):
            return False
    return all(any(_within(a, b) for b in _networks(other)) for a in _networks(entry))


def _show(value: object) -> str:
    """A short rendering of a TOML value for messages (`"x"`, `70000`, `true`, `a table`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else type(value).__name__


def _choices_text(choices: tuple[str, ...]) -> str:
    quoted = [_quote(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _is_text(text: str) -> bool:
    """No control characters (they would break an FTP reply line or a log line)."""
    return all(c.isprintable() for c in text)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _bad(f"must be a string, got {_show(value)}")
    return value


def _text(value: object) -> str:
    text = _string(value)
    if not _is_text(text):
        raise _bad(f"must not contain line breaks or control characters, got {_show(text)}")
    return text


def _name(value: object) -> str:
    text = _text(value)
    if not text:
        raise _bad("must not be empty")
    return text


def _choice(literal: object) -> Callable[[object], str]:
    choices = cast(tuple[str, ...], get_args(literal))

    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _bad(f"must be {_choices_text(choices)}, got {_show(value)}")
        return value

    return convert


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"must be an integer, got {_show(value)}")
    return value


def _positive_integer(value: object) -> int:
    number = _integer(value)
    if number <= 0:
        raise _bad(f"must be a positive integer, got {number}")
    return number


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"must be a number of seconds, got {_show(value)}")
    if not (math.isfinite(value) and value > 0):
        raise _bad(f"must be a positive number of seconds, got {_show(value)}")
    return float(value)


def _port(value: object) -> int:
    number = _integer(value)
    if not 0 <= number <= 65535:  # 0: any free port, for tests
        raise _bad(f"must be 1-65535, got {number}")
    return number


def _ip_address(value: object) -> str:
    text = _string(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _bad(f"must be an IPv4 or IPv6 address, got {_show(text)}") from None


def _passive_address(value: object) -> str:
    text = _string(value)
    if text == "":
        return text
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise _bad(
            f'must be an IPv4 address (PASV announces IPv4) or "", got {_show(text)}'
        ) from None


_UMASK = re.compile(r"[0-7]{1,4}")


def _umask(value: object) -> int:
    if not isinstance(value, str) or not _UMASK.fullmatch(value):
        raise _bad(f'must be an octal string such as "027", got {_show(value)}')
    mask = int(value, 8)
    if mask > 0o777:
        raise _bad(f"must be at most 777, got {_show(value)}")
    return mask


_PORT_RANGE = re.compile(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", re.ASCII)


def _port_range(value: object) -> tuple[int, int]:
    text = _string(value)
    match = _PORT_RANGE.fullmatch(text)
    if match:
        first, last = int(match[1]), int(match[2])
        if 1024 <= first <= last <= 65535:
            return (first, last)
    raise _bad(f'must be "FIRST-LAST" with 1024 <= FIRST <= LAST <= 65535, got {_show(text)}')


def _ciphers(value: object) -> str:
    text = _text(value)
    if text and not _openssl_accepts_ciphers(text):
        raise _bad(f"OpenSSL matches no TLS 1.2 cipher in {_show(text)}")
    return text


def _openssl_accepts_ciphers(ciphers: str) -> bool:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        context.set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return False
    return True


def _array(
    item: Callable[[object], Any], *, allow_empty: bool
) -> Callable[[object], tuple[Any, ...]]:
    """An array whose items are converted by `item`; bad items are reported as `KEY[i]`."""

    def convert(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _bad(f"must be an array, got {_show(value)}")
        if not value and not allow_empty:
            raise _bad("must not be an empty array")
        items: list[Any] = []
        problems: list[tuple[str, str]] = []
        for index, element in enumerate(value, 1):
            try:
                items.append(item(element))
            except _Invalid as error:
                problems.extend((f"[{index}]{suffix}", text) for suffix, text in error.problems)
        if problems:
            raise _Invalid(*problems)
        return tuple(items)

    return convert


def _unique(convert: Callable[[object], tuple[Any, ...]]) -> Callable[[object], tuple[Any, ...]]:
    def checked(value: object) -> tuple[Any, ...]:
        items = convert(value)
        seen: set[Any] = set()
        for index, element in enumerate(items, 1):
            if element in seen:
                raise _Invalid((f"[{index}]", f"{_show(element)} is listed twice"))
            seen.add(element)
        return items

    return checked


def _network(value: object) -> IPNetwork:
    text = _string(value)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _bad(f'must be an IP network such as "192.0.2.0/24", got {_show(text)}') from None
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is not None and network.prefixlen >= 96:
        # Client addresses are compared after mapping ::ffff:a.b.c.d to IPv4.
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class _Builder:
    """Turns a parsed TOML document into a Config, collecting problems and warnings."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []
        self.warnings: list[str] = []

    # Paths are resolved against the config file's folder.

    def path(self, value: object) -> Path:
        text = _string(value)
        if not text:
            raise _bad("must not be empty")
        if "\0" in text:
            raise _bad("must not contain NUL characters")
        return Path(os.path.normpath(self.base / text))

    def optional_path(self, value: object) -> Path | None:
        return None if value == "" else self.path(value)

    def users_url(self, value: object) -> str:
        text = _string(value)
        scheme, colon, rest = text.partition(":")
        if scheme == "postgresql" and rest.startswith("//"):
            return text  # a libpq URI (SPEC section 10); psycopg checks the rest
        if scheme != "sqlite" or not colon:
            raise _bad(f'must be "sqlite:PATH", got {_show(text)}')
        if not rest:
            raise _bad(f'must name a file after "sqlite:", got {_show(text)}')
        return f"sqlite:{self.path(rest)}"

    # Tables.

    def table(
        self, value: object, key: str, fields: Mapping[str, Callable[[object], Any]]
    ) -> tuple[dict[str, Any], set[str]] | None:
        """Convert the known keys of a table; report unknown keys and bad values.

        Returns the good values and the names of the present but bad keys, or None
        when `value` is not a table.
        """
        if not isinstance(value, dict):
            self.problems.append(f"{key}: must be a table, got {_show(value)}")
            return None
        values: dict[str, Any] = {}
        bad: set[str] = set()
        for name, item in value.items():
            where = f"{key}.{_key(name)}"
            convert = fields.get(name)
            if convert is None:
                self.problems.append(f"{where}: unknown key{_did_you_mean(name, fields)}")
                continue
            try:
                values[name] = convert(item)
            except _Invalid as error:
                bad.add(name)
                self.problems.extend(f"{where}{suffix}: {text}" for suffix, text in error.problems)
        return values, bad

    def array_of_tables(self, value: object, key: str) -> list[tuple[str, object]]:
        """The (`key[i]`, table) items of an array of tables."""
        if not isinstance(value, list):
            self.problems.append(
                f"{key}: must be an array of tables ([[{key}]]), got {_show(value)}"
            )
            return []
        return [(f"{key}[{index}]", item) for index, item in enumerate(value, 1)]

    # Sections.

    def server(self, value: object) -> ServerConfig:
        fields: dict[str, Callable[[object], Any]] = {
            "banner": _text,
            "home_root": self.path,
            "users": self.users_url,
            "upload_mode": _choice(UploadMode),
            "umask": _umask,
            "login_timeout": _seconds,
            "idle_timeout": _seconds,
            "data_timeout": _seconds,
            "max_sessions": _positive_integer,
            "max_sessions_per_address": _positive_integer,
            "max_login_failures": _positive_integer,
            "ban_time": _seconds,
            "audit_log": self.optional_path,
            "xferlog": self.optional_path,
            "allow_root": _boolean,
            "workers": _positive_integer,
            "shutdown_grace": _seconds,
            "role": _choice(Role),
        }
        result = self.table(value, "server", fields)
        values = result[0] if result else {}
        return self.server_defaults(values)

    def server_defaults(self, values: dict[str, Any]) -> ServerConfig:
        values.setdefault("home_root", self.path(str(ServerConfig.home_root)))
        values.setdefault("users", self.users_url(ServerConfig.users))
        return ServerConfig(**values)

    def listeners(self, value: object) -> tuple[ListenConfig, ...]:
        fields = {
            "address": _ip_address,
            "port": _port,
            "tls": _choice(TLSMode),
            "protocol": _choice(ListenProtocol),
        }
        items = self.array_of_tables(value, "listen")
        if isinstance(value, list) and not value:
            self.problems.append("listen: must hold at least one [[listen]] table")
        listeners: list[ListenConfig] = []
        seen: dict[tuple[str, int], str] = {}
        for key, item in items:
            result = self.table(item, key, fields)
            if result is None:
                continue
            values, bad = result
            listener = ListenConfig(**values)
            listeners.append(listener)
            where = (listener.address, listener.port)
            if bad or listener.port == 0:
                continue
            if where in seen:
                self.problems.append(
                    f"{key}.port: {listener.port} on {listener.address} "
                    f"is already used by {seen[where]}"
                )
            seen.setdefault(where, key)
        return tuple(listeners)

    def passive(self, value: object) -> PassiveConfig:
        fields = {"ports": _port_range, "address": _passive_address}
        result = self.table(value, "passive", fields)
        return PassiveConfig(**(result[0] if result else {}))

    def proxy(self, value: object) -> ProxyConfig:
        fields: dict[str, Callable[[object], Any]] = {
            "from": _array(_network, allow_empty=False),
            "required": _boolean,
        }
        result = self.table(value, "proxy", fields)
        values = result[0] if result else {}
        if result is not None and "from" not in values and "from" not in result[1]:
            self.problems.append(
                'proxy.from: required (the balancers\' networks, e.g. ["10.0.0.5/32"])'
            )
        for index, network in enumerate(values.get("from", ()), 1):
            if network.prefixlen == 0:
                self.warn(
                    f"proxy.from[{index}]",
                    f"{network} believes a PROXY header from any address, so any client"
                    " can choose the address it is seen from",
                )
        return ProxyConfig(trusted=values.get("from", ()), required=values.get("required", False))

    def metrics(self, value: object) -> MetricsConfig:
        fields = {"address": _ip_address, "port": _port}
        result = self.table(value, "metrics", fields)
        return MetricsConfig(**(result[0] if result else {}))

    def tls(self, value: object) -> tuple[TLSConfig, set[str]]:
        fields: dict[str, Callable[[object], Any]] = {
            "certificate": self.optional_path,
            "private_key": self.optional_path,
            "client_ca": self.optional_path,
            "crl": _array(self.path, allow_empty=True),
            "min_version": _choice(TLSVersion),
            "ciphers": _ciphers,
            "certificate_user": _choice(CertificateUser),
        }
        result = self.table(value, "tls", fields)
        if result is None:
            return TLSConfig(), {"tls"}
        values, bad = result
        return TLSConfig(**values), bad

    def edges(self, value: object) -> tuple[EdgeConfig, ...]:
        fields: dict[str, Callable[[object], Any]] = {
            "name": _name,
            "address": _ip_address,
            "port": _port,
            "certificate": self.path,
            "private_key": self.path,
            "ca": self.path,
        }
        edges: list[EdgeConfig] = []
        names: dict[str, str] = {}
        for key, item in self.array_of_tables(value, "edge"):
            result = self.table(item, key, fields)
            if result is None:
                continue
            values, bad = result
            missing = [name for name in fields if name not in values and name not in bad]
            for name in missing:
                self.problems.append(f"{key}.{name}: required")
            if missing or bad:
                continue
            edge = EdgeConfig(**values)
            if edge.name in names:
                self.problems.append(
                    f"{key}.name: {_quote(edge.name)} is already used by {names[edge.name]}"
                )
            names.setdefault(edge.name, key)
            edges.append(edge)
        return tuple(edges)

    def link(self, value: object) -> LinkConfig | None:
        fields: dict[str, Callable[[object], Any]] = {
            "address": _ip_address,
            "port": _port,
            "certificate": self.path,
            "private_key": self.path,
            "ca": self.path,
        }
        result = self.table(value, "link", fields)
        if result is None:
            return None
        values, bad = result
        missing = [name for name in fields if name not in values and name not in bad]
        for name in missing:
            self.problems.append(f"link.{name}: required")
        if missing or bad:
            return None
        return LinkConfig(**values)

    def check_role(self, data: Mapping[str, object], role: str) -> None:
        """An edge sets only what is physically its own; a server has no [link]."""
        if role != "edge":
            if "link" in data:
                self.problems.append('link: only an edge has a [link] (server.role = "edge")')
            return
        for name in data:
            if name not in EDGE_SECTIONS and name in ("class", "proxy", "edge"):
                self.problems.append(f"{_key(name)}: {EDGE_ONLY_TEXT}")
        for section, allowed in (("server", EDGE_SERVER_KEYS), ("tls", EDGE_TLS_KEYS)):
            table = data.get(section)
            if isinstance(table, dict):
                for name in table:
                    if name not in allowed:
                        self.problems.append(f"{section}.{_key(name)}: {EDGE_ONLY_TEXT}")
        if "link" not in data:
            self.problems.append("link: required on an edge (where the server dials it)")

    def classes(self, value: object) -> list[tuple[ClassConfig, set[str]]]:
        fields: dict[str, Callable[[object], Any]] = {
            "name": _name,
            "users": _array(_name, allow_empty=False),
            "groups": _array(_name, allow_empty=False),
            "addresses": _array(_network, allow_empty=False),
            "ssl": _choice(SSLRequirement),
            "client_certificate": _choice(CertificateCheck),
            "login": _unique(_array(_choice(LoginMethod), allow_empty=False)),
            "session_reuse": _choice(SessionReuse),
        }
        classes: list[tuple[ClassConfig, set[str]]] = []
        names: dict[str, str] = {}
        for key, item in self.array_of_tables(value, "class"):
            result = self.table(item, key, fields)
            if result is None:
                continue
            values, bad = result
            if "name" not in values:
                if "name" not in bad:
                    self.problems.append(f"{key}.name: required")
                bad.add("name")
                values["name"] = ""
            entry = ClassConfig(**values)
            classes.append((entry, bad))
            if "name" not in bad:
                if entry.name in names:
                    self.problems.append(
                        f"{key}.name: {_quote(entry.name)} is already used by {names[entry.name]}"
                    )
                names.setdefault(entry.name, key)
            if not bad & {"login", "client_certificate"} and entry.client_certificate == "off":
                needs = [m for m in entry.login if m.startswith("certificate")]
                if needs and "login" not in values:
                    self.problems.append(
                        f'{key}.login: the default ["certificate", "password"] needs '
                        'client_certificate = "verify", and it is "off"; '
                        'set login = ["password"]'
                    )
                elif needs:
                    self.problems.append(
                        f"{key}.login: {_choices_text(tuple(needs))} needs "
                        'client_certificate = "verify", and it is "off"'
                    )
        return classes

    # The whole document.

    def build(
        self,
        data: Mapping[str, object],
        path: Path | None,
        ephemeral_ports: tuple[int, int] | None,
    ) -> Config:
        server: ServerConfig | None = None
        listen: tuple[ListenConfig, ...] = (ListenConfig(),)
        passive = PassiveConfig()
        passive_ok = True
        tls = TLSConfig()
        tls_bad: set[str] = set()
        classes: list[tuple[ClassConfig, set[str]]] = []
        proxy: ProxyConfig | None = None
        metrics: MetricsConfig | None = None
        ssh = SSHConfig()
        edges: tuple[EdgeConfig, ...] = ()
        link: LinkConfig | None = None
        sections = (
            "server",
            "listen",
            "passive",
            "tls",
            "class",
            "proxy",
            "metrics",
            "ssh",
            "edge",
            "link",
        )
        for name, value in data.items():
            if name == "server":
                server = self.server(value)
            elif name == "listen":
                listen = self.listeners(value)
            elif name == "passive":
                before = len(self.problems)
                passive = self.passive(value)
                passive_ok = len(self.problems) == before
            elif name == "tls":
                tls, tls_bad = self.tls(value)
            elif name == "class":
                classes = self.classes(value)
            elif name == "proxy":
                proxy = self.proxy(value)
            elif name == "metrics":
                metrics = self.metrics(value)
            elif name == "ssh":
                ssh = self.ssh(value)
            elif name == "edge":
                edges = self.edges(value)
            elif name == "link":
                link = self.link(value)
            else:
                kind = "table" if isinstance(value, dict | list) else "key"
                self.problems.append(f"{_key(name)}: unknown {kind}{_did_you_mean(name, sections)}")
        if server is None:
            server = self.server_defaults({})
        self.check_role(data, server.role)
        self.check_tls(tls, tls_bad, listen)
        self.check_ssh(ssh, listen)
        if server.role != "edge":
            self.warn_classes(classes, tls, tls_bad)
        if passive_ok:
            self.warn_passive(passive, listen, ephemeral_ports)
        if self.problems:
            raise ConfigError(self.problems, self.warnings)
        return Config(
            path=path,
            server=server,
            listen=listen,
            passive=passive,
            tls=tls,
            classes=tuple(entry for entry, _ in classes),
            proxy=proxy,
            metrics=metrics,
            ssh=ssh,
            edges=edges,
            link=link,
            warnings=tuple(self.warnings),
        )

    def ssh(self, value: object) -> SSHConfig:
        fields = {"host_keys": _array(self.path, allow_empty=False)}
        result = self.table(value, "ssh", fields)
        return SSHConfig(**(result[0] if result else {}))

    # Checks across keys.

    def check_ssh(self, ssh: SSHConfig, listen: tuple[ListenConfig, ...]) -> None:
        """An sftp listener needs host keys; `tls` does not apply to it."""
        for index, listener in enumerate(listen, 1):
            if listener.protocol == "sftp" and not ssh.host_keys:
                self.problems.append(f'listen[{index}].protocol: "sftp" needs ssh.host_keys')

    def check_tls(self, tls: TLSConfig, bad: set[str], listen: tuple[ListenConfig, ...]) -> None:
        if bad & {"tls", "certificate", "private_key"}:
            return
        if tls.certificate is not None and tls.private_key is None:
            self.problems.append("tls.private_key: required when tls.certificate is set")
        if tls.private_key is not None and tls.certificate is None:
            self.problems.append("tls.certificate: required when tls.private_key is set")
        if tls.certificate is None and tls.private_key is None:
            for index, listener in enumerate(listen, 1):
                if listener.tls == "implicit" and listener.protocol == "ftp":
                    self.problems.append(
                        f'listen[{index}].tls: "implicit" needs tls.certificate and tls.private_key'
                    )

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"warning: {key}: {message}")

    def warn_classes(
        self, classes: list[tuple[ClassConfig, set[str]]], tls: TLSConfig, tls_bad: set[str]
    ) -> None:
        if not classes:
            self.warn("class", "no [[class]] is configured: every login is refused (530)")
            return
        for index, (entry, bad) in enumerate(classes, 1):
            if bad:
                continue
            key = f"class[{index}]"
            earlier = [
                (i, e)
                for i, (e, b) in enumerate(classes[: index - 1], 1)
                if not b and not e.has_criteria
            ]
            if earlier:
                i, catch_all = earlier[0]
                self.warn(
                    key,
                    f"never matches: class[{i}] {_quote(catch_all.name)} has no criteria "
                    "and matches every login first",
                )
            elif entry.groups is not None:
                self.warn_groups(index, entry, classes[index:])
        no_tls = tls.certificate is None and tls.private_key is None
        if no_tls and not tls_bad & {"tls", "certificate", "private_key"}:
            mandatory = [
                f"class[{i}] {_quote(e.name)}"
                for i, (e, b) in enumerate(classes, 1)
                if not b and e.ssl == "mandatory" and not set(e.login) <= _SSH_ONLY
            ]
            if mandatory:
                self.warn(
                    "tls",
                    "no certificate and private_key, so AUTH TLS is refused and nobody can "
                    f'log in through a class with ssl = "mandatory": {", ".join(mandatory)}',
                )

    def warn_groups(
        self, index: int, entry: ClassConfig, later: list[tuple[ClassConfig, set[str]]]
    ) -> None:
        """SPEC 4: warn when a class chosen by groups makes replies depend on membership.

        Members get `entry`; a non-member (or an unknown name) that `entry`'s users and
        addresses criteria admit falls through to the later classes. Walk them in order:
        a class that surely shares no name or address with `entry` (`_disjoint`) is never
        reached; any other may answer some non-members, so a different ssl,
        client_certificate or login there shows membership (warn, naming it). The walk
        stops at the first class that surely matches every name and address `entry`
        admits (`_covers`): nothing after it is reached. Without one, some non-members may
        match no class (530), which differs from any reply of `entry` (warn).
        When unsure, a class is taken as possibly matching and not as covering.
        """
        differ: list[str] = []
        kinds: set[str] = set()
        covered = False
        for offset, (other, bad) in enumerate(later, index + 1):
            if bad or _disjoint(entry, other):
                continue
            what = [
                key
                for key, differs in (
                    ("ssl", other.ssl != entry.ssl),
                    ("client_certificate", other.client_certificate != entry.client_certificate),
                    ("login", set(other.login) != set(entry.login)),
                )
                if differs
            ]
            if what:
                kinds.update(what)
                differ.append(f"class[{offset}] {_quote(other.name)} ({' and '.join(what)})")
            if _covers(other, entry):
                covered = True
                break
        reveal = "so its replies to USER tell who is in those groups"
        key = f"class[{index}].groups"
        if differ:
            different = (
                "ssl, client_certificate or login"
                if "client_certificate" in kinds
                else "ssl or login"
            )
            self.warn(
                key,
                f"{_quote(entry.name)} is chosen by groups and precedes a class with a "
                f"different {different}: {', '.join(differ)}; {reveal}",
            )
        elif not covered:
            admitted = (
                "everyone"
                if entry.users is None and entry.addresses is None
                else "every name and address it does"
            )
            self.warn(
                key,
                f"{_quote(entry.name)} is chosen by groups and no class after it matches "
                f"{admitted}, so other names may match no class (530); {reveal}",
            )

    def warn_passive(
        self,
        passive: PassiveConfig,
        listen: tuple[ListenConfig, ...],
        ephemeral_ports: tuple[int, int] | None,
    ) -> None:
        first, last = passive.ports
        shown = f"{first}-{last}"
        if ephemeral_ports is not None:
            low, high = ephemeral_ports
            if first <= high and low <= last:
                self.warn(
                    "passive.ports",
                    f"{shown} overlaps the kernel's ephemeral port range {low}-{high} "
                    "(net.ipv4.ip_local_port_range): outgoing connections may take these ports",
                )
        for index, listener in enumerate(listen, 1):
            if first <= listener.port <= last:
                self.warn(
                    "passive.ports",
                    f"{shown} includes the port of listen[{index}] ({listener.port})",
                )


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {_quote(close[0])}?)" if close else ""
