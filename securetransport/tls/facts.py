"""What a finished TLS handshake saw: the value that the context builder fills and the
session-reuse check reads (kept apart so that neither module imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HandshakeInfo:
    """What one finished server-side handshake saw."""

    tls_version: str  # "TLSv1.2", "TLSv1.3"
    cipher: str | None
    resumed: bool  # an abbreviated handshake (SSL_session_reused)
    resumed_from_control: bool  # resumed a session of this Context's control connection
    peer_chain: tuple[bytes, ...] = ()  # DER, leaf first, as presented, no duplicates
    verify_errors: tuple[tuple[int, int], ...] = ()  # (depth, X509_V_ERR_*) during the handshake
    group: str | None = None  # key exchange group, e.g. "x25519"
    master_key: bytes | None = field(default=None, repr=False)  # TLS 1.2 only
