"""The `[tls]` files: parsed once (at start, on SIGHUP, when they change on disk) into
a `TLSRuntime`, and handed to worker processes as DER bytes (`TLSMaterial`).

The service and the workers' supervisor both load and watch the files through this
module; nothing else reads them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from securetransport.config import Config
from securetransport.tls.context import (
    ServerCredentials,
    SessionContextFactory,
    load_server_credentials,
)
from securetransport.tls.verify import (
    LoadedCRL,
    TrustStore,
    crl_warnings,
    load_trust_store,
    prepare_stores,
)

log = Logger(namespace="securetransport.tls.material")

RELOAD_CHECK_SECONDS = 30.0


@dataclass
class TLSRuntime:
    """Parsed TLS material: the per-session Context factory and the client trust store."""

    contexts: SessionContextFactory
    trust: TrustStore


def load_tls(config: Config, previous: TLSRuntime | None = None) -> TLSRuntime | None:
    """Parse the [tls] files once; raises the loaders' one-line errors."""
    if not config.tls.enabled:
        return None
    trust = load_trust_store(
        config.tls.client_ca, config.tls.crl, previous=previous.trust if previous else None
    )
    credentials = load_server_credentials(config.tls)
    now = datetime.now(UTC)
    for warning in (*credentials.warnings, *trust.warnings, *crl_warnings(trust, now)):
        log.warn("{text}", text=warning)
    prepare_stores(trust, now)
    return TLSRuntime(contexts=SessionContextFactory(credentials), trust=trust)


def tls_files(config: Config) -> list[Path]:
    """The [tls] files whose change triggers a reload."""
    tls = config.tls
    return [p for p in (tls.certificate, tls.private_key, tls.client_ca, *tls.crl) if p is not None]


def file_stamps(paths: list[Path]) -> tuple[tuple[str, float, int], ...]:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
            stamps.append((str(path), info.st_mtime, info.st_size))
        except OSError:
            stamps.append((str(path), -1.0, -1))
    return tuple(stamps)


class TLSFileWatch:
    """Calls `changed()` when a [tls] file changed on disk (checked every 30 s), and
    `tick()` after every check."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        changed: Callable[[], None],
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.changed = changed
        self.tick = tick
        self._stamps = file_stamps(tls_files(config))
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(RELOAD_CHECK_SECONDS, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        stamps = file_stamps(tls_files(self.config))
        if stamps != self._stamps:
            self._stamps = stamps
            log.info("a [tls] file changed on disk; reloading")
            self.changed()
        self.tick()


@dataclass(frozen=True)
class TLSMaterial:
    """The parsed `[tls]` files as DER bytes: what the supervisor hands a worker."""

    chain: tuple[bytes, ...]
    private_key: bytes  # PKCS#8, unencrypted
    client_cas: tuple[bytes, ...]
    min_version: str
    ciphers: str
    trust_cas: tuple[bytes, ...]
    crls: tuple[tuple[str, bytes], ...]  # (file, DER)


def tls_material(tls: TLSRuntime | None) -> TLSMaterial | None:
    if tls is None:
        return None
    credentials = tls.contexts.credentials
    der = serialization.Encoding.DER
    return TLSMaterial(
        chain=tuple(cert.public_bytes(der) for cert in credentials.chain),
        private_key=credentials.private_key.private_bytes(
            der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        client_cas=tuple(cert.public_bytes(der) for cert in credentials.client_cas),
        min_version=credentials.min_version,
        ciphers=credentials.ciphers,
        trust_cas=tuple(cert.public_bytes(der) for cert in tls.trust.cas),
        crls=tuple((str(item.path), item.crl.public_bytes(der)) for item in tls.trust.crls),
    )


def tls_runtime(material: TLSMaterial | None) -> TLSRuntime | None:
    """Rebuild the TLS runtime from the supervisor's material, reading no file."""
    if material is None:
        return None
    key = serialization.load_der_private_key(material.private_key, password=None)
    credentials = ServerCredentials(
        chain=tuple(x509.load_der_x509_certificate(der) for der in material.chain),
        private_key=key,  # type: ignore[arg-type]
        client_cas=tuple(x509.load_der_x509_certificate(der) for der in material.client_cas),
        min_version=material.min_version,  # type: ignore[arg-type]
        ciphers=material.ciphers,
    )
    trust = TrustStore(
        cas=tuple(x509.load_der_x509_certificate(der) for der in material.trust_cas),
        crls=tuple(
            LoadedCRL(Path(path), x509.load_der_x509_crl(der)) for path, der in material.crls
        ),
    )
    prepare_stores(trust, datetime.now(UTC))
    return TLSRuntime(contexts=SessionContextFactory(credentials), trust=trust)
