"""Client certificate verification: one pure function, `verify_certificate` (SPEC section 4).

The TLS handshake only records the chain the client presented; this module decides,
from that chain, the trust store (`tls.client_ca`, `tls.crl`), the account's pins and
the clock, whether the certificate is **good**, and why not.

Checks, in this order; the first that fails gives the reason:

1. "unparseable": the leaf is not a certificate cryptography and OpenSSL both read.
2. "chain too long": more than MAX_CHAIN_LENGTH certificates presented.
   "unparseable" again if another presented certificate cannot be read.
3. trust: the leaf chains to a trust anchor of `tls.client_ca` (OpenSSL path building
   and signatures, dates left to step 4; every certificate of `tls.client_ca` is an
   anchor, a self-signed root or not), or its fingerprint is pinned. Neither:
   "untrusted". A certification path from the leaf to its anchor (both counted)
   longer than MAX_CHAIN_LENGTH: "chain too long". A pinned certificate that does
   not chain is its own anchor: its path is the leaf alone.
4. dates of every certificate of that path, leaf first: "not yet valid", "expired".
5. usage: a leaf with an extendedKeyUsage extension must list clientAuth
   (anyExtendedKeyUsage does not count): "wrong usage".
6. revocation, only when CRLs are configured and the leaf chains to an anchor: each
   certificate of the path below the anchor must be covered by a CRL of its issuer
   within its dates ("revocation unknown" otherwise: fail closed) and not be listed
   ("revoked"). A pinned certificate that does not chain has no issuer to ask.

`verify_certificate` never raises on any input bytes.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import threading
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

MAX_CHAIN_LENGTH: Final = 5
"""The most certificates a client may present, and the longest path from leaf to anchor."""

CRL_WARNING_DAYS: Final = 7

Reason = Literal[
    "untrusted",
    "expired",
    "not yet valid",
    "revoked",
    "revocation unknown",
    "wrong usage",
    "chain too long",
    "unparseable",
]

# X509_V_FLAG_NO_CHECK_TIME (OpenSSL >= 1.1.0): pyOpenSSL does not name it. Dates are
# checked here, so path building must not stop at the first date error, and the stores
# can be reused at any time (X509Store.set_time cannot be changed once set).
_NO_CHECK_TIME: Final = 0x200000

_REVOKED: Final = 23  # X509_V_ERR_CERT_REVOKED


class TrustStoreError(Exception):
    """A CA or CRL file that cannot be read or parsed; `path` names it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class LoadedCRL:
    """A CRL and the file it came from."""

    path: Path
    crl: x509.CertificateRevocationList


@dataclass(frozen=True, eq=False)
class TrustStore:
    """Parsed trust anchors and CRLs: immutable, shared by every verification.

    `crls` empty means no revocation checking. `warnings` are the remarks of the load
    that made this store (a CRL refused for being older than the loaded one).
    """

    cas: tuple[x509.Certificate, ...] = ()
    crls: tuple[LoadedCRL, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def checks_revocation(self) -> bool:
        return bool(self.crls)


@dataclass(frozen=True)
class CertificateVerdict:
    """What `verify_certificate` found about a presented chain.

    `subject` is an RFC 4514 string with control characters escaped (safe for logs);
    `common_name` is the raw CN value (None when the subject holds none or several).
    `fingerprint` is the SHA-256 of the leaf as presented, 64 lowercase hex digits.
    `if_pinned` is what `reason` would be on an account that pins the leaf (it differs
    only for a chain that does not reach `tls.client_ca`): `with_pins` uses it to judge
    the chain for an account without verifying it again.
    """

    presented: bool
    good: bool = False
    chains_to_ca: bool = False
    pinned: bool = False
    reason: Reason | None = None
    if_pinned: Reason | None = None
    fingerprint: str | None = None
    subject: str | None = None
    common_name: str | None = None
    emails: tuple[str, ...] = ()


NOT_PRESENTED: Final = CertificateVerdict(presented=False)
# Failures that no pin changes.
_STRUCTURAL: Final[frozenset[str]] = frozenset({"unparseable", "chain too long"})


# --- loading --------------------------------------------------------------------------

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TrustStoreError(path, f"cannot read: {error.strerror or error}") from None


def _load_cas(path: Path) -> tuple[x509.Certificate, ...]:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            cas = tuple(x509.load_pem_x509_certificates(data))
        else:
            cas = (x509.load_der_x509_certificate(data),)
        for ca in cas:
            crypto.X509.from_cryptography(ca)
    except (ValueError, crypto.Error):
        raise TrustStoreError(path, "not a PEM certificate file") from None
    return cas


def _load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            blocks = _PEM_CRL.findall(data)
            if not blocks:
                raise ValueError("no CRL")
            return [x509.load_pem_x509_crl(block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise TrustStoreError(path, "not a PEM certificate revocation list") from None


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        return None


def _newest(crls: Sequence[LoadedCRL]) -> LoadedCRL:
    """The newest CRL of one issuer: highest CRL number, else latest lastUpdate."""
    return max(crls, key=lambda c: (_crl_number(c.crl) or -1, c.crl.last_update_utc))


def _older(new: LoadedCRL, old: LoadedCRL) -> bool:
    new_number, old_number = _crl_number(new.crl), _crl_number(old.crl)
    if new_number is not None and old_number is not None:
        return new_number < old_number
    return new.crl.last_update_utc < old.crl.last_update_utc


def _describe(crl: LoadedCRL) -> str:
    number = _crl_number(crl.crl)
    return f"number {number}" if number is not None else f"of {crl.crl.last_update_utc:%Y-%m-%d}"


def load_trust_store(
    client_ca: Path | None,
    crl_files: Sequence[Path],
    *,
    previous: TrustStore | None = None,
) -> TrustStore:
    """Parse `tls.client_ca` (PEM, one or more certificates) and the `tls.crl` files.

    A missing or corrupt file raises TrustStoreError naming it (keep the last good
    store then). A CRL older, by CRL number, than the one `previous` holds for the same
    issuer is refused: the previous one is kept and a line in `warnings` says so.
    """
    cas = _load_cas(client_ca) if client_ca is not None else ()
    loaded = [LoadedCRL(path, crl) for path in crl_files for crl in _load_crls(path)]
    if previous is None or not previous.crls:
        return TrustStore(cas=cas, crls=tuple(loaded))

    def by_issuer(crls: Sequence[LoadedCRL]) -> dict[bytes, list[LoadedCRL]]:
        groups: dict[bytes, list[LoadedCRL]] = {}
        for item in crls:
            groups.setdefault(item.crl.issuer.public_bytes(), []).append(item)
        return groups

    old_groups = by_issuer(previous.crls)
    kept: list[LoadedCRL] = []
    warnings: list[str] = []
    for issuer, new_crls in by_issuer(loaded).items():
        new_best = _newest(new_crls)
        old_crls = old_groups.get(issuer, [])
        old_best = _newest(old_crls) if old_crls else None
        if old_best is not None and _older(new_best, old_best):
            kept.extend(old_crls)
            warnings.append(
                f"{new_best.path}: CRL of {_safe(new_best.crl.issuer.rfc4514_string())} is "
                f"{_describe(new_best)}, older than the loaded {_describe(old_best)} "
                f"from {old_best.path}: keeping the loaded one"
            )
        else:
            kept.extend(new_crls)
    return TrustStore(cas=cas, crls=tuple(kept), warnings=tuple(warnings))


def crl_warnings(trust: TrustStore, now: datetime.datetime) -> list[str]:
    """One line per CRL past its next update, not yet valid, or within 7 days of it."""
    now = _utc(now)
    lines: list[str] = []
    for item in trust.crls:
        crl = item.crl
        issuer = _safe(crl.issuer.rfc4514_string())
        if crl.last_update_utc > now:
            lines.append(
                f"{item.path}: CRL of {issuer} is not valid before "
                f"{crl.last_update_utc:%Y-%m-%d %H:%M:%S} UTC: certificates it covers get "
                '"revocation unknown"'
            )
        next_update = crl.next_update_utc
        if next_update is None:
            continue
        if next_update < now:
            lines.append(
                f"{item.path}: CRL of {issuer} is past its next update "
                f"({next_update:%Y-%m-%d %H:%M:%S} UTC): certificates it covers get "
                '"revocation unknown"'
            )
        elif next_update - now <= datetime.timedelta(days=CRL_WARNING_DAYS):
            lines.append(
                f"{item.path}: CRL of {issuer} reaches its next update at "
                f"{next_update:%Y-%m-%d %H:%M:%S} UTC: load a newer one before then"
            )
    return lines


# --- verification ---------------------------------------------------------------------


def _utc(now: datetime.datetime) -> datetime.datetime:
    """`now` as an aware UTC datetime; a naive one is taken as UTC."""
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.UTC)
    return now.astimezone(datetime.UTC)


def _safe(text: str) -> str:
    """Escape control and invisible formatting characters as RFC 4514 `\\HH` pairs."""
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append("".join(f"\\{b:02x}" for b in char.encode("utf-8", "surrogatepass")))
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class _Leaf:
    cert: x509.Certificate
    subject: str
    common_name: str | None
    emails: tuple[str, ...]
    eku: tuple[x509.ObjectIdentifier, ...] | None


def _parse_leaf(der: bytes) -> _Leaf:
    """Read everything the decision uses; ValueError (or another error) if unreadable."""
    cert = x509.load_der_x509_certificate(der)
    subject = _safe(cert.subject.rfc4514_string())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = None
    if len(cns) == 1 and isinstance(cns[0].value, str):
        common_name = cns[0].value
    extensions = cert.extensions
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        emails = tuple(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        emails = ()
    try:
        eku: tuple[x509.ObjectIdentifier, ...] | None = tuple(
            extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        eku = None
    return _Leaf(cert, subject, common_name, emails, eku)


def _new_store(
    cas: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList], flags: int
) -> crypto.X509Store:
    """An OpenSSL store that never looks at the clock: dates are judged here, at `now`."""
    store = crypto.X509Store()
    for ca in cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    for crl in crls:
        store.add_crl(crl)
    store.set_flags(flags | crypto.X509StoreFlags.PARTIAL_CHAIN | _NO_CHECK_TIME)
    return store


@dataclass
class _Revocation:
    """The store with the CRLs valid at some second (`valid`: indexes into
    `TrustStore.crls`), and the answers it gave, by presented chain (see `_revocation`)."""

    valid: tuple[int, ...]
    store: crypto.X509Store
    answers: OrderedDict[bytes, Reason | None] = field(default_factory=OrderedDict)


@dataclass
class _Stores:
    """The OpenSSL stores of one TrustStore, built once (see `_stores`); `revocation` is
    replaced when the set of CRLs valid at `now` changes."""

    anchors: crypto.X509Store
    windows: tuple[tuple[datetime.datetime, datetime.datetime | None], ...]
    revocation: _Revocation | None = None


# A parsed 5 MB CRL takes hundreds of milliseconds to load into a store, and OpenSSL
# still spends milliseconds on it at each check: keep the stores as long as their
# TrustStore lives (a reload makes a new one), and the answers for the chains last seen.
_STORES: weakref.WeakKeyDictionary[TrustStore, _Stores] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()
REVOCATION_ANSWERS: Final = 1024
"""Revocation answers kept per trust set (the chains last checked)."""


def _stores(trust: TrustStore) -> _Stores:
    with _STORES_LOCK:
        stores = _STORES.get(trust)
        if stores is None:
            windows = tuple((c.crl.last_update_utc, c.crl.next_update_utc) for c in trust.crls)
            stores = _Stores(_new_store(trust.cas, (), 0), windows)
            _STORES[trust] = stores
        return stores


def _revocation_store(trust: TrustStore, now: datetime.datetime) -> _Revocation:
    """The CAs and the CRLs valid at `now`, with CRL checking.

    OpenSSL's own CRL date check is replaced by choosing the CRLs here, with its bounds:
    lastUpdate <= now <= nextUpdate in whole seconds. A certificate whose issuer has no
    CRL valid at `now` then gets "unable to get CRL": "revocation unknown", as an expired
    or not yet valid CRL gave.
    """
    stores = _stores(trust)
    second = now.replace(microsecond=0)
    valid = tuple(
        index
        for index, (last, next_update) in enumerate(stores.windows)
        if last <= second and (next_update is None or second <= next_update)
    )
    cached = stores.revocation
    if cached is not None and cached.valid == valid:
        return cached
    store = _new_store(
        trust.cas, [trust.crls[index].crl for index in valid], crypto.X509StoreFlags.CRL_CHECK
    )
    stores.revocation = revocation = _Revocation(valid, store)
    return revocation


def _chain_to_anchor(
    leaf: crypto.X509, others: list[crypto.X509], trust: TrustStore
) -> list[x509.Certificate] | None:
    """The certification path leaf .. anchor, dates not checked; None if it does not chain."""
    if not trust.cas:
        return None
    context = crypto.X509StoreContext(_stores(trust).anchors, leaf, others)
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError:
        return None
    return [cert.to_cryptography() for cert in context.get_verified_chain()]


def _dates(path: Sequence[x509.Certificate], now: datetime.datetime) -> Reason | None:
    for cert in path:
        if now < cert.not_valid_before_utc:
            return "not yet valid"
        if now > cert.not_valid_after_utc:
            return "expired"
    return None


def prepare_stores(trust: TrustStore, now: datetime.datetime) -> None:
    """Build the OpenSSL stores of `trust` (CRLs valid at `now`) where it is loaded, so
    the first verification does not pay for parsing the CRLs into them."""
    if trust.cas:
        _stores(trust)
        if trust.checks_revocation:
            _revocation_store(trust, _utc(now))


def _chain_digest(chain: Sequence[bytes]) -> bytes:
    digest = hashlib.sha256()
    for der in chain:
        data = bytes(der)
        digest.update(len(data).to_bytes(4, "big") + data)
    return digest.digest()


def _revocation(
    chain: Sequence[bytes],
    path: Sequence[x509.Certificate],
    others: list[crypto.X509],
    trust: TrustStore,
    now: datetime.datetime,
) -> Reason | None:
    """Check each certificate below the anchor against its issuer's CRLs (OpenSSL).

    The answer depends only on the presented chain (which, with the trust set, gives
    `path` and `others`) and the store of the CRLs valid at `now`: it is kept with
    that store and reused for the same chain.
    """
    revocation = _revocation_store(trust, now)
    key = _chain_digest(chain)
    with _STORES_LOCK:
        if key in revocation.answers:
            revocation.answers.move_to_end(key)
            return revocation.answers[key]
    reason: Reason | None = None
    for cert in path[:-1]:
        target = crypto.X509.from_cryptography(cert)
        try:
            crypto.X509StoreContext(revocation.store, target, others).verify_certificate()
        except crypto.X509StoreContextError as error:
            code = error.errors[0] if error.errors else None
            reason = "revoked" if code == _REVOKED else "revocation unknown"
            break
    with _STORES_LOCK:
        revocation.answers[key] = reason
        while len(revocation.answers) > REVOCATION_ANSWERS:
            revocation.answers.popitem(last=False)
    return reason


def verify_certificate(
    chain: Sequence[bytes],
    trust: TrustStore,
    *,
    pins: Collection[str] = frozenset(),
    now: datetime.datetime,
) -> CertificateVerdict:
    """Judge the chain a client presented (DER, leaf first) against `trust` and `pins`.

    `pins` are SHA-256 fingerprints (any case, colons allowed); `now` is the time to
    judge dates at (naive means UTC). An empty chain gives `presented=False`.
    """
    if not chain:
        return NOT_PRESENTED
    try:
        leaf_der = bytes(chain[0])
        fingerprint = hashlib.sha256(leaf_der).hexdigest()
    except Exception:
        return CertificateVerdict(presented=True, reason="unparseable")
    if isinstance(pins, str):
        pins = (pins,)
    pinned = fingerprint in {pin.replace(":", "").lower() for pin in pins}
    try:
        return _verify(chain, leaf_der, fingerprint, pinned, trust, _utc(now))
    except Exception:  # never raises: whatever the bytes, they are "unparseable"
        return CertificateVerdict(
            presented=True, pinned=pinned, reason="unparseable", fingerprint=fingerprint
        )


def _verify(
    chain: Sequence[bytes],
    leaf_der: bytes,
    fingerprint: str,
    pinned: bool,
    trust: TrustStore,
    now: datetime.datetime,
) -> CertificateVerdict:
    unparseable = CertificateVerdict(
        presented=True, pinned=pinned, reason="unparseable", fingerprint=fingerprint
    )
    try:
        leaf = _parse_leaf(leaf_der)
        leaf_x509 = crypto.X509.from_cryptography(leaf.cert)
    except (ValueError, TypeError, crypto.Error):
        return unparseable

    def verdict(
        reason: Reason | None, chains_to_ca: bool = False, if_pinned: Reason | None = None
    ) -> CertificateVerdict:
        return CertificateVerdict(
            presented=True,
            good=reason is None,
            chains_to_ca=chains_to_ca,
            pinned=pinned,
            reason=reason,
            if_pinned=if_pinned if reason == "untrusted" else reason,
            fingerprint=fingerprint,
            subject=leaf.subject,
            common_name=leaf.common_name,
            emails=leaf.emails,
        )

    if len(chain) > MAX_CHAIN_LENGTH:
        return verdict("chain too long")
    try:
        others = [
            crypto.X509.from_cryptography(x509.load_der_x509_certificate(bytes(der)))
            for der in chain[1:]
        ]
    except (ValueError, TypeError, crypto.Error):
        return unparseable

    path = _chain_to_anchor(leaf_x509, others, trust)
    chains_to_ca = path is not None
    if path is None:
        path = [leaf.cert]  # good only when pinned: then dates and usage still count
    if len(path) > MAX_CHAIN_LENGTH:
        return verdict("chain too long", chains_to_ca)
    reason = _dates(path, now)
    if reason is None and leaf.eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in leaf.eku:
        reason = "wrong usage"
    if reason is None and chains_to_ca and trust.checks_revocation:
        reason = _revocation(chain, path, others, trust, now)
    if not chains_to_ca and not pinned:
        return verdict("untrusted", False, if_pinned=reason)
    return verdict(reason, chains_to_ca)


def with_pins(verdict: CertificateVerdict, pins: Collection[str]) -> CertificateVerdict:
    """`verdict` (from `verify_certificate`) for an account that pins `pins`: "good" is
    per account (SPEC section 4). A chain that reaches `tls.client_ca` is judged the same
    for everyone; one that does not is good only where it is pinned (then its dates and
    usage count: `if_pinned`). Nothing is verified again."""
    if not verdict.presented or verdict.fingerprint is None:
        return verdict
    pinned = verdict.fingerprint in {pin.replace(":", "").lower() for pin in pins}
    reason = verdict.reason
    if not verdict.chains_to_ca and reason not in _STRUCTURAL:
        reason = verdict.if_pinned if pinned else "untrusted"
    return replace(verdict, pinned=pinned, reason=reason, good=reason is None)
