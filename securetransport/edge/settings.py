"""The session-shaping settings a server pushes to its edges, and their digest.

SPEC section 8: SSL access is the same at an edge by construction. The server sends the
settings below when a link comes up; the edge applies them before serving anyone; both
log `ssl-access digest HEX`, the SHA-256 of the canonical form (sorted-key compact JSON),
which `securetransport check` prints for a server config too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securetransport.config import Config
from securetransport.tls.context import ServerCredentials


def _file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def canonical_settings(config: Config) -> dict[str, Any]:
    """Everything that shapes a session, without host-specific paths."""
    server = config.server
    tls = config.tls
    return {
        "banner": server.banner,
        "login_timeout": server.login_timeout,
        "idle_timeout": server.idle_timeout,
        "data_timeout": server.data_timeout,
        "max_sessions": server.max_sessions,
        "max_sessions_per_address": server.max_sessions_per_address,
        "max_login_failures": server.max_login_failures,
        "ban_time": server.ban_time,
        "upload_mode": server.upload_mode,
        "tls": {
            "min_version": tls.min_version,
            "ciphers": tls.ciphers,
            "certificate_user": tls.certificate_user,
            "client_ca": _file_digest(tls.client_ca),
            "crl": [_file_digest(path) for path in tls.crl],
        },
        "classes": [
            {
                "name": klass.name,
                "users": list(klass.users) if klass.users is not None else None,
                "groups": list(klass.groups) if klass.groups is not None else None,
                "addresses": [str(n) for n in klass.addresses]
                if klass.addresses is not None
                else None,
                "ssl": klass.ssl,
                "client_certificate": klass.client_certificate,
                "login": list(klass.login),
                "session_reuse": klass.session_reuse,
            }
            for klass in config.classes
        ],
    }


def canonical_bytes(settings: dict[str, Any]) -> bytes:
    return json.dumps(settings, sort_keys=True, separators=(",", ":")).encode("utf-8")


def digest_of(settings: dict[str, Any]) -> str:
    """The `ssl-access digest` of a canonical settings dict."""
    return hashlib.sha256(canonical_bytes(settings)).hexdigest()


def settings_digest(config: Config) -> str:
    return digest_of(canonical_settings(config))


def settings_message(config: Config, client_cas: tuple[x509.Certificate, ...]) -> dict[str, Any]:
    """The SETTINGS frame's content: the canonical settings and the CA names to request
    client certificates with (DER, hex)."""
    der = serialization.Encoding.DER
    return {
        "settings": canonical_settings(config),
        "client_cas": [cert.public_bytes(der).hex() for cert in client_cas],
    }


def apply_settings(own: ServerCredentials, message: dict[str, Any]) -> ServerCredentials:
    """The edge's credentials with the server's TLS settings applied."""
    settings = message["settings"]
    cas = tuple(x509.load_der_x509_certificate(bytes.fromhex(h)) for h in message["client_cas"])
    return replace(
        own,
        client_cas=cas,
        min_version=settings["tls"]["min_version"],
        ciphers=settings["tls"]["ciphers"] or own.ciphers,
    )
