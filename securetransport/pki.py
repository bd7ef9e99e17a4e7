"""A small private PKI for trials and tests (`securetransport pki init`).

`init_pki` writes a CA, a server certificate for localhost/127.0.0.1/::1 and one
client certificate per user. The helpers below it (`make_ca`, `issue_certificate`,
`make_crl`, `write_pem`) are general enough for tests to build expired,
not-yet-valid, wrong-usage, intermediate or other-CA certificates and CRLs.
Keys are EC P-256 unless a key is passed in.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securetransport.userstore import valid_account_name

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
DEFAULT_DAYS = 825
CA_COMMON_NAME = "securetransport test CA"
SERVER_COMMON_NAME = "localhost"
_RESERVED_NAMES = frozenset({"ca", "server"})
_CLOCK_SKEW = datetime.timedelta(minutes=5)

PrivateKey = CertificateIssuerPrivateKeyTypes
PEMObject = (
    x509.Certificate
    | Sequence[x509.Certificate]
    | x509.CertificateRevocationList
    | CertificateIssuerPrivateKeyTypes
)


class PKIError(Exception):
    """A PKI file cannot be written or read; the message is one line for the user."""


class _Default:
    """Marks a keyword left out (when None has a meaning of its own)."""


DEFAULT = _Default()


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(
    *,
    digital_signature: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(
    issuer: x509.Certificate | None, issuer_public_key: CertificateIssuerPublicKeyTypes
) -> x509.AuthorityKeyIdentifier:
    if issuer is not None:
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
        except x509.ExtensionNotFound:
            pass
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key)


def _build(
    *,
    subject: x509.Name,
    issuer_cert: x509.Certificate | None,
    signing_key: PrivateKey,
    key: PrivateKey,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    is_ca: bool,
    path_length: int | None,
    key_usage: x509.KeyUsage | None | _Default,
    eku: Sequence[x509.ObjectIdentifier] | None,
    san: Sequence[x509.GeneralName],
    serial: int | None,
) -> x509.Certificate:
    now = _now()
    start = not_before if not_before is not None else now - _CLOCK_SKEW
    end = not_after if not_after is not None else now + datetime.timedelta(days=DEFAULT_DAYS)
    if isinstance(key_usage, _Default):
        key_usage = (
            _key_usage(key_cert_sign=True, crl_sign=True)
            if is_ca
            else _key_usage(digital_signature=True)
        )
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            _authority_key_identifier(issuer_cert, signing_key.public_key()), critical=False
        )
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(signing_key, _hash_for(signing_key))


def make_ca(
    cn: str = CA_COMMON_NAME,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    key: PrivateKey | None = None,
    path_length: int | None = 0,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root CA: basicConstraints CA:true (critical, `path_length`),
    keyUsage keyCertSign+cRLSign (critical), SKI. Default validity: now-5min to +825 days.
    """
    key = key if key is not None else new_key()
    cert = _build(
        subject=_name(cn),
        issuer_cert=None,
        signing_key=key,
        key=key,
        not_before=not_before,
        not_after=not_after,
        is_ca=True,
        path_length=path_length,
        key_usage=DEFAULT,
        eku=None,
        san=(),
        serial=None,
    )
    return cert, key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    cn: str,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = (CLIENT_AUTH,),
    san_dns: Iterable[str] = (),
    san_ip: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    san_email: Iterable[str] = (),
    is_ca: bool = False,
    key: PrivateKey | None = None,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | None | _Default = DEFAULT,
    serial: int | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A certificate for `cn` signed by `ca_cert`/`ca_key`; returns (certificate, key).

    `eku=None` leaves the extendedKeyUsage out. `is_ca=True` makes an intermediate CA
    (`path_length` None: no limit). `key_usage` defaults to digitalSignature for a leaf
    and keyCertSign+cRLSign for a CA; None leaves it out. Dates default to
    now-5min .. now+825 days; pass past or future dates for expired / not yet valid.
    """
    if eku is not None and not eku:
        raise ValueError("eku: give at least one usage, or None for no extendedKeyUsage")
    key = key if key is not None else new_key()
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in san_dns]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ip]
    san += [x509.RFC822Name(email) for email in san_email]
    cert = _build(
        subject=_name(cn),
        issuer_cert=ca_cert,
        signing_key=ca_key,
        key=key,
        not_before=not_before,
        not_after=not_after,
        is_ca=is_ca,
        path_length=path_length,
        key_usage=key_usage,
        eku=eku,
        san=san,
        serial=serial,
    )
    return cert, key


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    revoked_serials: Iterable[int],
    *,
    last_update: datetime.datetime,
    next_update: datetime.datetime,
    crl_number: int,
) -> x509.CertificateRevocationList:
    """A CRL issued by `ca_cert` listing `revoked_serials` (revoked at `last_update`)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(_authority_key_identifier(ca_cert, ca_key.public_key()), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(last_update)
            .build()
        )
    return builder.sign(ca_key, _hash_for(ca_key))


def _pem_bytes(obj: PEMObject) -> tuple[bytes, int]:
    """The PEM encoding and the file mode it deserves (0600 for keys)."""
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM), 0o644
    if isinstance(obj, x509.CertificateRevocationList):
        return obj.public_bytes(serialization.Encoding.PEM), 0o644
    if isinstance(obj, Sequence):
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in obj), 0o644
    data = obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data, 0o600


def write_pem(path: str | Path, obj: PEMObject, *, mode: int | None = None) -> Path:
    """Write a certificate, a chain (sequence of certificates, leaf first), a CRL or a
    private key (unencrypted PKCS#8) as PEM. Keys get mode 0600, the rest 0644, unless
    `mode` is given. Overwrites. Returns the path.
    """
    path = Path(path)
    data, default_mode = _pem_bytes(obj)
    mode = default_mode if mode is None else mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the file may have existed with other bits, and umask applies
        with os.fdopen(fd, "wb", closefd=False) as stream:
            stream.write(data)
    finally:
        os.close(fd)
    return path


def load_certificate(path: str | Path) -> x509.Certificate:
    """The first certificate in a PEM (or DER) file; PKIError if there is none."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PKIError(f"cannot read {path}: {error.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError:
        raise PKIError(f"{path}: not a PEM certificate") from None
    try:
        cert.extensions  # noqa: B018 (parsed lazily: fail here, not later)
    except ValueError as error:
        raise PKIError(f"{path}: malformed certificate extension: {error}") from None
    return cert


def init_pki(
    folder: str | Path,
    users: Sequence[str],
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> list[Path]:
    """Write ca.crt/ca.key, server.crt/server.key and NAME.crt/NAME.key per user.

    The CA (pathlen 0) signs a server certificate for localhost, 127.0.0.1 and ::1
    (serverAuth) and client certificates with CN = NAME (clientAuth; a NAME with an
    `@` is also put in the subjectAltName as rfc822Name, for `certificate_user =
    "email"`; other client certificates carry no subjectAltName). Keys are 0600,
    certificates 0644, a folder created here 0700. Existing files are kept (PKIError)
    unless `force`. Returns the paths written.
    """
    folder = Path(folder)
    names = list(dict.fromkeys(users))
    for name in names:
        if not valid_account_name(name):
            raise PKIError(f"invalid user name: {name!r}")
        if name in _RESERVED_NAMES:
            raise PKIError(f"user name {name!r} would overwrite {name}.crt of the CA or server")
    if days < 1:
        raise PKIError(f"days must be at least 1: {days}")
    if folder.exists() and not folder.is_dir():
        raise PKIError(f"not a folder: {folder}")
    stems = ["ca", "server", *names]
    targets = [folder / f"{stem}.{ext}" for stem in stems for ext in ("crt", "key")]
    if not force:
        existing = [path for path in targets if path.exists() or path.is_symlink()]
        if existing:
            raise PKIError(f"{existing[0]} exists (use --force to replace it)")

    now = _now()
    not_before = now - _CLOCK_SKEW
    not_after = now + datetime.timedelta(days=days)
    ca_cert, ca_key = make_ca(CA_COMMON_NAME, not_before=not_before, not_after=not_after)
    issued: dict[str, tuple[x509.Certificate, PrivateKey]] = {"ca": (ca_cert, ca_key)}
    issued["server"] = issue_certificate(
        ca_cert,
        ca_key,
        cn=SERVER_COMMON_NAME,
        not_before=not_before,
        not_after=not_after,
        eku=(SERVER_AUTH,),
        san_dns=("localhost",),
        san_ip=("127.0.0.1", "::1"),
    )
    for name in names:
        issued[name] = issue_certificate(
            ca_cert,
            ca_key,
            cn=name,
            not_before=not_before,
            not_after=not_after,
            san_email=(name,) if "@" in name else (),
        )

    return write_issued(folder, issued)


def write_issued(
    folder: Path, issued: dict[str, tuple[x509.Certificate, PrivateKey]]
) -> list[Path]:
    """Write each `stem.crt`/`stem.key` of `issued` (in its order) into `folder`, made
    0700 when it does not exist yet; the paths written. OSError becomes PKIError."""
    try:
        if not folder.exists():
            folder.mkdir(parents=True, mode=0o700)
            os.chmod(folder, 0o700)
        written = []
        for stem, (cert, key) in issued.items():
            written.append(write_pem(folder / f"{stem}.crt", cert))
            written.append(write_pem(folder / f"{stem}.key", key))
    except OSError as error:
        raise PKIError(f"cannot write {error.filename or folder}: {error.strerror}") from None
    return written
