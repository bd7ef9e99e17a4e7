"""Was a data connection's TLS session resumed from its control connection's session?

The private pyOpenSSL bindings needed here (`SSL_session_reused`: pyopenssl#1276 is not
merged; the length of a session's master key; the shutdown flags of a Connection being
freed; the DER form of a session, for its ID and its ticket) are called in this module
only. `check_data_session` is the pure decision behind the `522` reply.
"""

from __future__ import annotations

import hashlib
import hmac
import weakref
from typing import Final

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from securetransport.tls.facts import HandshakeInfo

NOT_RESUMED: Final = (
    "TLS session of data connection not resumed from the control connection: "
    "enable TLS session reuse in your client (curl and lftp do it by default; "
    "lftp: set ftp:ssl-copy-sid yes)"
)
OTHER_SESSION: Final = (
    "TLS session of data connection not resumed from this control connection's session"
)
OFFERED_OTHER: Final = (
    "TLS session of data connection not resumed from the control connection: the client "
    "offered a TLS session of another of its connections (one session cache shared by "
    "several connections, as rclone does): use one connection "
    "(rclone: --ftp-concurrency 1 --transfers 1 --checkers 1) "
    'or ask for a class with session_reuse = "account"'
)
NOT_FROM_ACCOUNT: Final = (
    "TLS session of data connection not resumed from a control connection of this "
    "account and address"
)


def session_reused(conn: SSL.Connection) -> bool:
    """True when `conn`'s handshake resumed a session (SSL_session_reused)."""
    return bool(_lib.SSL_session_reused(conn._ssl))


def session_key_digest(conn: SSL.Connection) -> bytes | None:
    """SHA-256 of the current session's key, or None while it has none.

    TLS 1.2: the master secret (shared by every resumption of the session). TLS 1.3: the
    PSK of the ticket resumed, then of the last ticket issued. Unlike `master_key()` this
    never raises, so it never drains OpenSSL's error queue inside a handshake callback.
    """
    session = _lib.SSL_get_session(conn._ssl)
    if session == _ffi.NULL or _lib.SSL_SESSION_get_master_key(session, _ffi.NULL, 0) <= 0:
        return None
    key = conn.master_key()
    return hashlib.sha256(key).digest() if key else None


def keep_session_on_free(conn: SSL.Connection) -> None:
    """Keep `conn`'s session in its Context's cache even if `conn` ends without a TLS
    shutdown.

    OpenSSL evicts the session of a Connection freed without having sent close_notify:
    one data connection that drops (an abort, a client sending a bare FIN) would then
    make every later TLS 1.2 resumption by session ID (clients without tickets) fail.
    TLS 1.1 and later allow resuming such sessions (RFC 5246, section 7.2.1). The flag is
    set only when the Connection object is collected, so a real shutdown is unchanged.
    """
    finalizer = weakref.finalize(conn, _mark_shutdown_sent, conn._ssl)
    finalizer.atexit = False


def _mark_shutdown_sent(ssl: object) -> None:
    _lib.SSL_set_shutdown(ssl, _lib.SSL_get_shutdown(ssl) | _lib.SSL_SENT_SHUTDOWN)


def server_session_id(conn: SSL.Connection) -> bytes:
    """The ID of the server-side session of `conn` (b"" when it has none)."""
    session = _lib.SSL_get_session(conn._ssl)
    if session == _ffi.NULL:
        return b""
    ids = _session_fields(_session_der(session)).get(0x04, [])
    return ids[1] if len(ids) > 1 else b""


def session_ticket(session: SSL.Session) -> bytes:
    """The ticket a client holds in `session` (b"" when it has none)."""
    tickets = _session_fields(_session_der(session._session)).get(0xAA, [])
    inner = _der_items(tickets[0]) if tickets else []
    return inner[0][1] if inner and inner[0][0] == 0x04 else b""


def _session_der(session: object) -> bytes:
    length = _lib.i2d_SSL_SESSION(session, _ffi.NULL)
    if length <= 0:
        return b""
    buffer = _ffi.new("unsigned char[]", length)
    cursor = _ffi.new("unsigned char **", buffer)
    written = _lib.i2d_SSL_SESSION(session, cursor)
    return bytes(_ffi.buffer(buffer, max(written, 0)))


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) items of DER `data`, in order; stops at the first malformed one."""
    items: list[tuple[int, bytes]] = []
    index = 0
    while index + 2 <= len(data) and len(items) < 64:
        tag, length = data[index], data[index + 1]
        index += 2
        if length & 0x80:
            size = length & 0x7F
            if size == 0 or size > 4 or index + size > len(data):
                break
            length = int.from_bytes(data[index : index + size], "big")
            index += size
        if index + length > len(data):
            break
        items.append((tag, data[index : index + length]))
        index += length
    return items


def _session_fields(der: bytes) -> dict[int, list[bytes]]:
    """The fields of an ASN.1 SSL_SESSION by tag (several OCTET STRINGs share tag 0x04:
    the cipher, the session ID, the master key, in that order)."""
    outer = _der_items(der)
    if not outer or outer[0][0] != 0x30:
        return {}
    fields: dict[int, list[bytes]] = {}
    for tag, value in _der_items(outer[0][1]):
        fields.setdefault(tag, []).append(value)
    return fields


def master_key_matches(control: SSL.Connection, data: SSL.Connection) -> bool | None:
    """TLS 1.2: whether both connections share the master secret (an extra, public proof
    that `data` resumed `control`'s session). TLS 1.3: None (keys always differ)."""
    if "TLSv1.2" not in (control.get_protocol_version_name(), data.get_protocol_version_name()):
        return None
    if control.get_protocol_version_name() != data.get_protocol_version_name():
        return False
    control_key, data_key = control.master_key(), data.master_key()
    return (
        control_key is not None
        and data_key is not None
        and hmac.compare_digest(control_key, data_key)
    )


def check_data_session(
    control: HandshakeInfo, data: HandshakeInfo, data_conn_reused: bool, required: bool
) -> str | None:
    """None if the data connection may carry this session's data; else the text for 522.

    `required` is the class's `session_reuse = "required"`. The data connection must have
    resumed (`data_conn_reused`) a session that this session's Context issued to the
    control connection or to one of its resumed data connections; in TLS 1.2 both must
    also share the control connection's master secret.
    """
    if not required:
        return None
    if not data_conn_reused:
        return NOT_RESUMED
    if not data.resumed_from_control:
        return OTHER_SESSION
    if control.master_key is not None or data.master_key is not None:  # TLS 1.2
        if control.master_key is None or data.master_key is None:
            return OTHER_SESSION
        if not hmac.compare_digest(control.master_key, data.master_key):
            return OTHER_SESSION
    return None
