"""Server TLS: credentials parsed once, one pyOpenSSL Context per FTPS session.

`load_server_credentials` reads the `[tls]` PEM files (at start and on SIGHUP, before
privileges are dropped). `SessionContextFactory.new_session_context()` builds the
Context of ONE control connection; that session's data connections use the same
Context, so they can resume the control session and nobody else's (session caches and
ticket keys are per Context). `connection_creator` adapts a Context (or a callable
making one per connection, for implicit listeners) to Twisted's TLS layer, and
`handshake_info` reports what a finished handshake saw.

A presented client certificate never fails the handshake: the verify callback only
records (depth, errno); `securetransport.tls.verify` decides later.

Session lineage (why `HandshakeInfo.resumed_from_control` exists): "was the session
resumed?" alone is not enough, even with a Context per session. An attacker who wins
the race to a victim's passive port once gets a full handshake on the victim's Context,
and with it a session ticket of that Context; winning the race again, it resumes that
ticket and "resumed" is true. The Context therefore remembers the keys of the sessions
issued to its first connection (the control connection) and to connections that
resumed one of those, and a data connection counts only if it resumed one of them. The
key is the TLS 1.2 master secret or the TLS 1.3 per-ticket PSK, read with
`Connection.master_key()` from an info callback (`reuse.session_key_digest`); only
SHA-256 digests are kept. This relies on the first Connection made from a session
Context being the control connection's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import stat
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from securetransport.config import TLSConfig
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.reuse import (
    keep_session_on_free,
    session_key_digest,
    session_reused,
    session_ticket,
)

ServerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DEFAULT_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 ciphers when `tls.ciphers` is empty: AEAD with forward secrecy only."""

SESSION_ID_CONTEXT: Final = b"securetransport"
SESSION_TIMEOUT: Final = 2**31 - 1
"""Seconds a session stays resumable (vsftpd uses INT_MAX): OpenSSL's 7200 s default would
break every transfer after two hours of a session that requires reuse. TLS 1.3 clients
still drop a ticket after its 7-day lifetime hint (the RFC 8446 maximum)."""

VERIFY_DEPTH: Final = 5
MAX_RECORDED_ERRORS: Final = 32
MAX_REMEMBERED_KEYS: Final = 1024
"""Session keys a Context remembers from data connections (least recently used dropped);
the control connection's own keys are never dropped."""

# First accepted wins; X25519MLKEM768 (hybrid post-quantum) needs OpenSSL >= 3.5. One flat
# list (no "/" tuples): the server takes any listed group the client sent a key share
# for, so no HelloRetryRequest when the client's first choice is listed.
_GROUP_LISTS: Final = (b"X25519MLKEM768:X25519:P-256:P-384", b"X25519:P-256:P-384")

_OP_NO_RENEGOTIATION: Final[int] = getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000)
_MIN_VERSIONS: Final = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


class TLSConfigError(Exception):
    """A `[tls]` file or setting that cannot be used; the message is one line naming the key."""


@dataclass(frozen=True)
class ServerCredentials:
    """The parsed `[tls]` files and settings, ready to build contexts from."""

    chain: tuple[x509.Certificate, ...]  # leaf first
    private_key: ServerKey = field(repr=False)
    client_cas: tuple[x509.Certificate, ...] = ()  # names sent in the CertificateRequest
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: str = DEFAULT_CIPHERS
    warnings: tuple[str, ...] = ()  # `warning: KEY: ...` lines for the caller to log


# ------------------------------------------------------------------------ loading files


def _path(key: str, path: Path | None) -> Path:
    if path is None:
        raise TLSConfigError(f"{key}: not set")
    return path


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSConfigError(f"{key}: cannot read {path}: {error.strerror}") from None


def _certificates(key: str, path: Path, data: bytes) -> tuple[x509.Certificate, ...]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(f"{key}: no PEM certificate in {path}")
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as error:
        raise TLSConfigError(f"{key}: invalid PEM certificate in {path}: {error}") from None


def _private_key(path: Path, data: bytes) -> ServerKey:
    key = "tls.private_key"
    if b"ENCRYPTED" in data:
        raise TLSConfigError(
            f"{key}: {path} is encrypted; passphrases are not supported: "
            "store the key unencrypted, readable by root only (chmod 600)"
        )
    if b"PRIVATE KEY-----" not in data:
        raise TLSConfigError(f"{key}: no PEM private key in {path}")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted in a way the marker test above did not see
        raise TLSConfigError(f"{key}: {path} is encrypted; passphrases are not supported") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: details are not for the log
        raise TLSConfigError(
            f"{key}: cannot parse {path} (expected PEM PKCS#8 or traditional RSA/EC key)"
        ) from None
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TLSConfigError(f"{key}: {path} holds a {type(loaded).__name__}; use an RSA or EC key")
    return loaded


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _date_warnings(
    key: str, certs: tuple[x509.Certificate, ...], now: datetime.datetime
) -> list[str]:
    warnings = []
    for index, cert in enumerate(certs, 1):
        which = f"certificate {index} ({cert.subject.rfc4514_string()})"
        if cert.not_valid_after_utc < now:
            expired = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%SZ")
            warnings.append(
                f"warning: {key}: {which} EXPIRED on {expired}: clients will refuse it; renew it"
            )
        elif cert.not_valid_before_utc > now:
            start = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%SZ")
            warnings.append(f"warning: {key}: {which} is not valid before {start}")
    return warnings


def _check_ciphers(ciphers: str) -> None:
    """Reject a string that leaves no TLS 1.2 cipher."""
    problem = f'tls.ciphers: no usable cipher in "{ciphers}"'
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        context.set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise TLSConfigError(problem) from None
    names = SSL.Connection(context).get_cipher_list()
    if not any(not name.startswith("TLS_") for name in names):  # TLS_*: TLS 1.3 suites
        raise TLSConfigError(problem)


def load_server_credentials(
    tls: TLSConfig, now: datetime.datetime | None = None
) -> ServerCredentials:
    """Read and check the `[tls]` files once; raise TLSConfigError (one line, naming the key).

    Warnings (key readable by others, expired or not yet valid certificates, a chain out of
    order) are returned in `ServerCredentials.warnings`. Encrypted keys are not supported.
    A self-test handshake in memory proves OpenSSL accepts the result.
    """
    now = now if now is not None else datetime.datetime.now(datetime.UTC)
    warnings: list[str] = []
    cert_path = _path("tls.certificate", tls.certificate)
    key_path = _path("tls.private_key", tls.private_key)
    chain = _certificates("tls.certificate", cert_path, _read("tls.certificate", cert_path))
    private_key = _private_key(key_path, _read("tls.private_key", key_path))
    if _spki(private_key.public_key()) != _spki(chain[0].public_key()):
        raise TLSConfigError("tls.private_key: does not match tls.certificate")
    mode = stat.S_IMODE(os.stat(key_path).st_mode)
    if mode & 0o077:
        warnings.append(
            f"warning: tls.private_key: readable by other users (mode {mode:04o}); chmod 600"
        )
    for index in range(1, len(chain)):
        if chain[index - 1].issuer != chain[index].subject:
            warnings.append(
                f"warning: tls.certificate: certificate {index + 1} did not issue certificate "
                f"{index}; put the server certificate first, then its issuers in order"
            )
            break
    warnings += _date_warnings("tls.certificate", chain, now)

    client_cas: tuple[x509.Certificate, ...] = ()
    if tls.client_ca is not None:
        client_cas = _certificates(
            "tls.client_ca", tls.client_ca, _read("tls.client_ca", tls.client_ca)
        )
        warnings += _date_warnings("tls.client_ca", client_cas, now)

    ciphers = tls.ciphers.strip() or DEFAULT_CIPHERS
    _check_ciphers(ciphers)
    credentials = ServerCredentials(
        chain=chain,
        private_key=private_key,
        client_cas=client_cas,
        min_version=tls.min_version,
        ciphers=ciphers,
        warnings=tuple(warnings),
    )
    _self_test(SessionContextFactory(credentials))
    return credentials


# ------------------------------------------------------------------ per-connection records


@dataclass
class _ConnectionRecord:
    verify_errors: list[tuple[int, int]] = field(default_factory=list)
    is_control: bool | None = None  # None until its first info callback
    resumed_from_control: bool | None = None  # None until resumption is seen


_records: weakref.WeakKeyDictionary[SSL.Connection, _ConnectionRecord] = weakref.WeakKeyDictionary()


def _record(connection: SSL.Connection) -> _ConnectionRecord:
    record = _records.get(connection)
    if record is None:
        record = _records[connection] = _ConnectionRecord()
    return record


def _record_verify(
    connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """Verify callback: note OpenSSL's complaint, never fail the handshake."""
    if errno:
        errors = _record(connection).verify_errors
        if len(errors) < MAX_RECORDED_ERRORS:
            errors.append((depth, errno))
    return True


class _SessionKeys:
    """The session keys one Context issued to its control connection and its descendants."""

    def __init__(self) -> None:
        self._control_claimed = False
        # A tuple (usually of one key: the control connection's) and a dict made only when
        # a data connection brings a key: an idle session's memory counts.
        self._pinned: tuple[bytes, ...] = ()
        self._recent: dict[bytes, None] | None = None  # insertion-ordered: LRU

    def _known(self, digest: bytes) -> bool:
        if digest in self._pinned:
            return True
        if self._recent is not None and digest in self._recent:
            del self._recent[digest]
            self._recent[digest] = None
            return True
        return False

    def _remember(self, digest: bytes, pinned: bool) -> None:
        if pinned:
            if digest not in self._pinned:
                self._pinned += (digest,)
            return
        if self._recent is None:
            self._recent = {}
        if digest not in self._pinned and digest not in self._recent:
            self._recent[digest] = None
            if len(self._recent) > MAX_REMEMBERED_KEYS:
                del self._recent[next(iter(self._recent))]

    def info_callback(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_ALERT:
            return
        record = _record(connection)
        if record.is_control is None:
            record.is_control = not self._control_claimed
            self._control_claimed = True
            keep_session_on_free(connection)
        if record.resumed_from_control is None and session_reused(connection):
            digest = session_key_digest(connection)
            record.resumed_from_control = digest is not None and self._known(digest)
        if record.is_control or record.resumed_from_control:
            digest = session_key_digest(connection)
            if digest is not None:
                self._remember(digest, pinned=bool(record.is_control))


# --------------------------------------------------------------------------- contexts


def _supported_groups() -> bytes | None:
    probe = SSL.Context(SSL.TLS_SERVER_METHOD)
    for groups in _GROUP_LISTS:
        if _lib.SSL_CTX_set1_curves_list(probe._context, groups) == 1:
            return groups
        _lib.ERR_clear_error()
    return None


@contextlib.contextmanager
def _shared_objects() -> Iterator[None]:
    """Silence pyOpenSSL 26's deprecation of passing X509/PKey objects to a Context.

    If a later pyOpenSSL refuses them, pass the cryptography objects of `credentials`
    instead (tests fail loudly then).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"Passing pyOpenSSL (X509|PKey) objects is deprecated", DeprecationWarning
        )
        yield


class SessionContextFactory:
    """Builds one pyOpenSSL Context per FTPS session from credentials parsed once."""

    def __init__(self, credentials: ServerCredentials) -> None:
        self.credentials = credentials
        # Converted once and shared by every Context: one copy of the key in memory, and
        # per Context about 8 KiB and 0.15 ms less than passing cryptography objects
        # (which pyOpenSSL converts anew each time). pyOpenSSL 26 deprecates passing its
        # own objects to a Context: see `_shared_objects`.
        self._certificate = crypto.X509.from_cryptography(credentials.chain[0])
        self._extra_chain = [crypto.X509.from_cryptography(c) for c in credentials.chain[1:]]
        self._key = crypto.PKey.from_cryptography_key(credentials.private_key)
        self._client_cas = [crypto.X509.from_cryptography(c) for c in credentials.client_cas]
        self._ciphers = credentials.ciphers.encode("ascii")
        self._min_version = _MIN_VERSIONS[credentials.min_version]
        self._groups = _supported_groups()

    def new_session_context(self, request_client_certificate: bool = True) -> SSL.Context:
        """A complete Context for one control connection and its data connections.

        Its first Connection must be the control connection's: that is the one whose
        sessions the data connections may resume (see `HandshakeInfo.resumed_from_control`).
        """
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(self._min_version)
        context.set_options(
            SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | _OP_NO_RENEGOTIATION
        )
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_cipher_list(self._ciphers)
        if self._groups is not None:
            _lib.SSL_CTX_set1_curves_list(context._context, self._groups)
        with _shared_objects():
            context.use_certificate(self._certificate)
            for extra in self._extra_chain:
                context.add_extra_chain_cert(extra)
            context.use_privatekey(self._key)
            context.check_privatekey()
        context.set_session_id(SESSION_ID_CONTEXT)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_timeout(SESSION_TIMEOUT)
        if request_client_certificate:
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, _record_verify)
            context.set_verify_depth(VERIFY_DEPTH)
            store = context.get_cert_store()
            assert store is not None
            for ca in self._client_cas:
                with _shared_objects():
                    context.add_client_ca(ca)
                store.add_cert(ca)  # so that the recorded errors mean something
        else:
            context.set_verify(SSL.VERIFY_NONE)
        context.set_info_callback(_SessionKeys().info_callback)
        return context


@implementer(IOpenSSLServerConnectionCreator)
class SessionConnectionCreator:
    """Server Connections for Twisted's TLS layer (`startTLS`, `TLSMemoryBIOFactory`)."""

    def __init__(self, context: SSL.Context | Callable[[], SSL.Context]) -> None:
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802
        context = self._context if isinstance(self._context, SSL.Context) else self._context()
        return SSL.Connection(context, None)


def connection_creator(
    context: SSL.Context | Callable[[], SSL.Context],
) -> SessionConnectionCreator:
    """A creator using `context` for every Connection (a control connection and its data
    connections), or, given a callable, a fresh Context per Connection (implicit listeners;
    the session's Context is then `transport.getHandle().get_context()`)."""
    return SessionConnectionCreator(context)


def _peer_chain(connection: SSL.Connection) -> tuple[bytes, ...]:
    """The presented certificates as DER, leaf first, taken through OpenSSL only.

    No parsing by `cryptography` here: a certificate it refuses (an unparseable
    subject, say) must reach `verify_certificate`, which says "unparseable".
    """
    chain: list[bytes] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        leaf = connection.get_peer_certificate()
        # The server side's peer chain leaves the leaf out; be robust either way.
        presented = [leaf] if leaf is not None else []
        presented += connection.get_peer_cert_chain() or []
        for cert in presented:
            der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
            if der not in chain:
                chain.append(der)
    return tuple(chain)


def handshake_info(connection: SSL.Connection) -> HandshakeInfo:
    """What the finished handshake of `connection` (server side) saw.

    On a resumed connection no certificate is verified again (VERIFY_CLIENT_ONCE):
    `verify_errors` is empty and `peer_chain` is at most the leaf kept in the session.
    """
    record = _records.get(connection) or _ConnectionRecord()
    version = connection.get_protocol_version_name()
    master_key = connection.master_key() if version == "TLSv1.2" else None
    return HandshakeInfo(
        tls_version=version,
        cipher=connection.get_cipher_name(),
        resumed=session_reused(connection),
        resumed_from_control=bool(record.resumed_from_control),
        peer_chain=_peer_chain(connection),
        verify_errors=tuple(record.verify_errors),
        group=connection.get_group_name(),
        master_key=master_key,
    )


# --------------------------------------------------------------------------- self-test


def _handshake_in_memory(client: SSL.Connection, server: SSL.Connection) -> bool:
    """Drive both ends until their handshakes finish; False if they stall."""
    for _ in range(10):
        finished = 0
        for connection in (client, server):
            try:
                connection.do_handshake()
                finished += 1
            except SSL.WantReadError:
                pass
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
        if finished == 2:
            return True
    return False


def ticket_key_name(context: SSL.Context) -> bytes:
    """The name of the key `context` encrypts session tickets with (b"" if it issues none).

    OpenSSL starts every ticket with this 16-byte name and gives no API to read it, so
    one TLS 1.3 handshake in memory asks `context` for a ticket (1 to 3 ms). That
    Connection is never a control connection: call this only after the first one.
    """
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_min_proto_version(SSL.TLS1_3_VERSION)
    client = SSL.Connection(client_context)
    client.set_connect_state()
    server = SSL.Connection(context)
    server.set_accept_state()
    try:
        if not _handshake_in_memory(client, server):
            return b""
        for _ in range(2):  # TLS 1.3 tickets follow the handshake
            with contextlib.suppress(SSL.WantReadError):
                client.bio_write(server.bio_read(65536))
            with contextlib.suppress(SSL.WantReadError):
                client.recv(1)
    except SSL.Error:
        return b""
    session = client.get_session()
    ticket = session_ticket(session) if session is not None else b""
    return ticket[:16] if len(ticket) > 16 else b""


def _self_test(factory: SessionContextFactory) -> None:
    """One handshake per allowed version in memory: proves OpenSSL accepts the set-up."""
    versions = [SSL.TLS1_3_VERSION]
    if factory.credentials.min_version == "TLSv1.2":
        versions.append(SSL.TLS1_2_VERSION)
    for version in versions:
        client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_context.set_min_proto_version(version)
        client_context.set_max_proto_version(version)
        client_context.set_cipher_list(b"ALL:@SECLEVEL=0")
        client = SSL.Connection(client_context)
        client.set_connect_state()
        server = SSL.Connection(factory.new_session_context())
        server.set_accept_state()
        try:
            finished = _handshake_in_memory(client, server)
        except SSL.Error as error:
            reason = _reason(error)
            if version == SSL.TLS1_2_VERSION and "no shared cipher" in reason:
                raise TLSConfigError(
                    f'tls.ciphers: no usable cipher in "{factory.credentials.ciphers}" '
                    "for the key of tls.certificate"
                ) from None
            raise TLSConfigError(
                f"tls.certificate: OpenSSL refuses this certificate and key: {reason}"
            ) from None
        if not finished:
            raise TLSConfigError("tls.certificate: self-test TLS handshake did not finish")


def _reason(error: SSL.Error) -> str:
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return ", ".join(str(entry[2]) for entry in entries if len(entry) > 2) or str(error)
