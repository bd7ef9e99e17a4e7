"""Was a data connection's TLS session resumed from its control connection's session?

The private pyOpenSSL bindings needed here (`SSL_session_reused`: pyopenssl#1276 is not
merged; the length of a session's master key; the shutdown flags of a Connection being
freed) are called in this module only. `check_data_session` is the pure decision behind
the `522` reply.
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
