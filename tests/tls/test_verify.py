"""Tests for securetransport.tls.verify: real certificates and CRLs made here."""

from __future__ import annotations

import datetime
import functools
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import crypto
from twisted.trial.unittest import SynchronousTestCase

from securetransport.pki import (
    CLIENT_AUTH,
    SERVER_AUTH,
    PrivateKey,
    issue_certificate,
    make_ca,
    make_crl,
    new_key,
    write_pem,
)
from securetransport.tls.verify import (
    MAX_CHAIN_LENGTH,
    CertificateVerdict,
    LoadedCRL,
    TrustStore,
    TrustStoreError,
    crl_warnings,
    load_trust_store,
    prepare_stores,
    verify_certificate,
)
from securetransport.userstore import certificate_fingerprint

UTC = datetime.UTC
NOW = datetime.datetime(2031, 3, 15, 12, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def self_signed(
    cn: str = "self",
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
    days: int = 30,
    start: datetime.datetime | None = None,
) -> x509.Certificate:
    """A self-signed end-entity certificate (what a user might pin)."""
    from cryptography.hazmat.primitives import hashes

    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = start or NOW - DAY
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(key, hashes.SHA256())


def crl(
    ca: tuple[x509.Certificate, PrivateKey],
    revoked: tuple[int, ...] = (),
    *,
    number: int = 1,
    last: datetime.datetime = NOW - DAY,
    next: datetime.datetime = NOW + 30 * DAY,
) -> x509.CertificateRevocationList:
    return make_crl(ca[0], ca[1], revoked, last_update=last, next_update=next, crl_number=number)


@dataclass(frozen=True)
class PKI:
    root: tuple[x509.Certificate, PrivateKey]
    other: tuple[x509.Certificate, PrivateKey]
    inter: tuple[x509.Certificate, PrivateKey]
    alice: x509.Certificate
    revoked: x509.Certificate
    via_inter: x509.Certificate
    other_alice: x509.Certificate


@functools.cache
def pki() -> PKI:
    """One root with an intermediate, one unrelated CA, and a few leaves."""
    root = make_ca(
        "Root CA", not_before=NOW - 100 * DAY, not_after=NOW + 900 * DAY, path_length=None
    )
    other = make_ca("Other CA", not_before=NOW - 100 * DAY, not_after=NOW + 900 * DAY)
    inter = issue_certificate(
        root[0],
        root[1],
        cn="Intermediate CA",
        is_ca=True,
        eku=None,
        not_before=NOW - 50 * DAY,
        not_after=NOW + 500 * DAY,
    )

    def leaf(ca: tuple[x509.Certificate, PrivateKey], cn: str) -> x509.Certificate:
        return issue_certificate(
            ca[0],
            ca[1],
            cn=cn,
            not_before=NOW - DAY,
            not_after=NOW + 30 * DAY,
            san_email=[f"{cn}@example.org"],
        )[0]

    return PKI(
        root=root,
        other=other,
        inter=inter,
        alice=leaf(root, "alice"),
        revoked=leaf(root, "mallory"),
        via_inter=leaf(inter, "ivan"),
        other_alice=leaf(other, "alice"),
    )


def trust(
    *cas: x509.Certificate, crls: tuple[x509.CertificateRevocationList, ...] = ()
) -> TrustStore:
    return TrustStore(
        cas=cas, crls=tuple(LoadedCRL(Path(f"crl{i}.pem"), c) for i, c in enumerate(crls))
    )


def verify(
    chain: list[x509.Certificate] | list[bytes],
    store: TrustStore,
    *,
    pins: frozenset[str] = frozenset(),
    now: datetime.datetime = NOW,
) -> CertificateVerdict:
    raw = [c if isinstance(c, bytes) else der(c) for c in chain]
    return verify_certificate(raw, store, pins=pins, now=now)


class VerifyTrustTests(SynchronousTestCase):
    def test_none_presented(self) -> None:
        verdict = verify_certificate([], trust(pki().root[0]), now=NOW)
        self.assertEqual(
            (verdict.presented, verdict.good, verdict.reason, verdict.fingerprint),
            (False, False, None, None),
        )

    def test_trusted_ca(self) -> None:
        p = pki()
        verdict = verify([p.alice], trust(p.root[0]))
        self.assertEqual(
            (verdict.presented, verdict.good, verdict.chains_to_ca, verdict.pinned),
            (True, True, True, False),
        )
        self.assertIsNone(verdict.reason)
        self.assertEqual(verdict.fingerprint, certificate_fingerprint(p.alice))
        self.assertEqual(verdict.subject, "CN=alice")
        self.assertEqual(verdict.common_name, "alice")
        self.assertEqual(verdict.emails, ("alice@example.org",))

    def test_other_ca_is_untrusted(self) -> None:
        p = pki()
        verdict = verify([p.other_alice], trust(p.root[0]))
        self.assertEqual(
            (verdict.good, verdict.chains_to_ca, verdict.reason), (False, False, "untrusted")
        )
        # what it says about itself is still reported, for the logs
        self.assertEqual(verdict.common_name, "alice")

    def test_no_trust_anchors_is_untrusted(self) -> None:
        verdict = verify([pki().alice], TrustStore())
        self.assertEqual((verdict.good, verdict.reason), (False, "untrusted"))

    def test_presenting_the_other_ca_does_not_help(self) -> None:
        p = pki()
        verdict = verify([p.other_alice, p.other[0]], trust(p.root[0]))
        self.assertEqual(verdict.reason, "untrusted")

    def test_several_anchors(self) -> None:
        p = pki()
        verdict = verify([p.other_alice], trust(p.root[0], p.other[0]))
        self.assertTrue(verdict.good)

    def test_intermediate_presented(self) -> None:
        p = pki()
        verdict = verify([p.via_inter, p.inter[0]], trust(p.root[0]))
        self.assertEqual((verdict.good, verdict.chains_to_ca), (True, True))

    def test_intermediate_missing(self) -> None:
        p = pki()
        self.assertEqual(verify([p.via_inter], trust(p.root[0])).reason, "untrusted")

    def test_intermediate_in_the_trust_store(self) -> None:
        p = pki()
        self.assertTrue(verify([p.via_inter], trust(p.inter[0], p.root[0])).good)

    def test_intermediate_alone_is_an_anchor(self) -> None:
        p = pki()
        self.assertTrue(verify([p.via_inter], trust(p.inter[0])).good)
        # ... which does not make its own issuer's other leaves trusted
        self.assertEqual(verify([p.alice], trust(p.inter[0])).reason, "untrusted")

    def test_leaf_signed_by_a_non_ca_is_untrusted(self) -> None:
        p = pki()
        key = new_key()
        # alice's certificate has no CA basic constraint: what it signs is not trusted
        forged = issue_certificate(
            p.alice, key, cn="bob", not_before=NOW - DAY, not_after=NOW + DAY
        )[0]
        self.assertEqual(verify([forged, p.alice], trust(p.root[0])).reason, "untrusted")

    def test_forged_signature_is_untrusted(self) -> None:
        p = pki()
        impostor = make_ca("Root CA", not_before=NOW - DAY, not_after=NOW + DAY)
        leaf = issue_certificate(
            impostor[0], impostor[1], cn="alice", not_before=NOW - DAY, not_after=NOW + DAY
        )[0]
        verdict = verify([leaf], trust(p.root[0]))
        self.assertEqual((verdict.reason, verdict.chains_to_ca), ("untrusted", False))


class VerifyDatesAndUsageTests(SynchronousTestCase):
    def leaf(self, **kwargs: object) -> x509.Certificate:
        root = pki().root
        options: dict[str, object] = {"not_before": NOW - DAY, "not_after": NOW + DAY}
        options.update(kwargs)
        return issue_certificate(root[0], root[1], cn="alice", **options)[0]  # type: ignore[arg-type]

    def test_expired(self) -> None:
        verdict = verify(
            [self.leaf(not_after=NOW - datetime.timedelta(seconds=1))], trust(pki().root[0])
        )
        self.assertEqual(
            (verdict.good, verdict.chains_to_ca, verdict.reason), (False, True, "expired")
        )

    def test_not_yet_valid(self) -> None:
        verdict = verify(
            [self.leaf(not_before=NOW + datetime.timedelta(seconds=1))], trust(pki().root[0])
        )
        self.assertEqual(verdict.reason, "not yet valid")

    def test_date_bounds_are_inclusive(self) -> None:
        store = trust(pki().root[0])
        self.assertTrue(verify([self.leaf(not_after=NOW)], store).good)
        self.assertTrue(verify([self.leaf(not_before=NOW)], store).good)

    def test_expired_intermediate(self) -> None:
        p = pki()
        inter = issue_certificate(
            p.root[0],
            p.root[1],
            cn="Old CA",
            is_ca=True,
            eku=None,
            not_before=NOW - 10 * DAY,
            not_after=NOW - DAY,
        )
        leaf = issue_certificate(
            inter[0], inter[1], cn="x", not_before=NOW - DAY, not_after=NOW + DAY
        )[0]
        self.assertEqual(verify([leaf, inter[0]], trust(p.root[0])).reason, "expired")

    def test_expired_anchor(self) -> None:
        root = make_ca("Dead CA", not_before=NOW - 10 * DAY, not_after=NOW - DAY)
        leaf = issue_certificate(
            root[0], root[1], cn="x", not_before=NOW - 2 * DAY, not_after=NOW + DAY
        )[0]
        self.assertEqual(verify([leaf], trust(root[0])).reason, "expired")

    def test_now_in_another_time_zone(self) -> None:
        leaf = self.leaf(not_after=NOW)
        store = trust(pki().root[0])
        plus5 = datetime.timezone(datetime.timedelta(hours=5))
        later = (NOW + datetime.timedelta(minutes=1)).astimezone(plus5)
        self.assertEqual(verify([leaf], store, now=later).reason, "expired")
        self.assertTrue(verify([leaf], store, now=NOW.astimezone(plus5)).good)
        naive = (NOW + datetime.timedelta(minutes=1)).replace(tzinfo=None)  # taken as UTC
        self.assertEqual(verify([leaf], store, now=naive).reason, "expired")

    def test_server_auth_only_is_wrong_usage(self) -> None:
        verdict = verify([self.leaf(eku=[SERVER_AUTH])], trust(pki().root[0]))
        self.assertEqual((verdict.good, verdict.reason), (False, "wrong usage"))

    def test_any_extended_key_usage_is_not_client_auth(self) -> None:
        leaf = self.leaf(eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
        self.assertEqual(verify([leaf], trust(pki().root[0])).reason, "wrong usage")

    def test_no_eku_is_fine(self) -> None:
        self.assertTrue(verify([self.leaf(eku=None)], trust(pki().root[0])).good)

    def test_client_and_server_auth_is_fine(self) -> None:
        leaf = self.leaf(eku=[SERVER_AUTH, CLIENT_AUTH])
        self.assertTrue(verify([leaf], trust(pki().root[0])).good)

    def test_order_untrusted_before_dates(self) -> None:
        other = pki().other
        leaf = issue_certificate(
            other[0],
            other[1],
            cn="x",
            eku=[SERVER_AUTH],
            not_before=NOW - 3 * DAY,
            not_after=NOW - DAY,
        )[0]
        self.assertEqual(verify([leaf], trust(pki().root[0])).reason, "untrusted")

    def test_order_dates_before_usage(self) -> None:
        leaf = self.leaf(eku=[SERVER_AUTH], not_after=NOW - DAY, not_before=NOW - 2 * DAY)
        self.assertEqual(verify([leaf], trust(pki().root[0])).reason, "expired")

    def test_order_usage_before_revocation(self) -> None:
        p = pki()
        leaf = self.leaf(eku=[SERVER_AUTH])
        store = trust(p.root[0], crls=(crl(p.root, (leaf.serial_number,)),))
        self.assertEqual(verify([leaf], store).reason, "wrong usage")


class VerifyRevocationTests(SynchronousTestCase):
    def test_not_revoked(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.revoked.serial_number,)),))
        self.assertTrue(verify([p.alice], store).good)

    def test_revoked(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.revoked.serial_number,)),))
        verdict = verify([p.revoked], store)
        self.assertEqual(
            (verdict.good, verdict.chains_to_ca, verdict.reason), (False, True, "revoked")
        )

    def test_revoked_but_no_crl_configured(self) -> None:
        p = pki()
        self.assertTrue(verify([p.revoked], trust(p.root[0])).good)

    def test_crl_expired(self) -> None:
        p = pki()
        old = crl(p.root, last=NOW - 10 * DAY, next=NOW - datetime.timedelta(seconds=1))
        self.assertEqual(
            verify([p.alice], trust(p.root[0], crls=(old,))).reason, "revocation unknown"
        )

    def test_crl_not_yet_valid(self) -> None:
        p = pki()
        early = crl(p.root, last=NOW + DAY, next=NOW + 10 * DAY)
        self.assertEqual(
            verify([p.alice], trust(p.root[0], crls=(early,))).reason, "revocation unknown"
        )

    def test_issuer_without_crl(self) -> None:
        p = pki()
        # CRLs are configured, but only the other CA's: alice's issuer is not covered
        store = trust(p.root[0], p.other[0], crls=(crl(p.other),))
        self.assertEqual(verify([p.alice], store).reason, "revocation unknown")
        self.assertTrue(verify([p.other_alice], store).good)

    def test_crl_with_a_forged_signature(self) -> None:
        p = pki()
        impostor = make_ca("Root CA", not_before=NOW - DAY, not_after=NOW + DAY)
        forged = crl(impostor)  # same issuer name, wrong key
        self.assertEqual(
            verify([p.alice], trust(p.root[0], crls=(forged,))).reason, "revocation unknown"
        )

    def test_intermediate_chain_fully_covered(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root), crl(p.inter)))
        self.assertTrue(verify([p.via_inter, p.inter[0]], store).good)

    def test_intermediate_without_its_issuers_crl(self) -> None:
        p = pki()
        # the leaf is covered by the intermediate's CRL, the intermediate by nothing
        store = trust(p.root[0], crls=(crl(p.inter),))
        self.assertEqual(verify([p.via_inter, p.inter[0]], store).reason, "revocation unknown")

    def test_leaf_without_its_issuers_crl(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root),))
        self.assertEqual(verify([p.via_inter, p.inter[0]], store).reason, "revocation unknown")

    def test_intermediate_revoked(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.inter[0].serial_number,)), crl(p.inter)))
        self.assertEqual(verify([p.via_inter, p.inter[0]], store).reason, "revoked")

    def test_leaf_revoked_by_intermediate(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root), crl(p.inter, (p.via_inter.serial_number,))))
        self.assertEqual(verify([p.via_inter, p.inter[0]], store).reason, "revoked")

    def test_anchor_itself_needs_no_crl(self) -> None:
        p = pki()
        # the intermediate is the anchor: nothing above it is asked
        store = trust(p.inter[0], crls=(crl(p.inter),))
        self.assertTrue(verify([p.via_inter], store).good)
        revoking = trust(p.inter[0], crls=(crl(p.inter, (p.via_inter.serial_number,)),))
        self.assertEqual(verify([p.via_inter], revoking).reason, "revoked")

    def test_intermediate_and_root_in_store(self) -> None:
        p = pki()
        store = trust(p.inter[0], p.root[0], crls=(crl(p.root), crl(p.inter)))
        self.assertTrue(verify([p.via_inter], store).good)

    def test_newest_of_several_crls_counts(self) -> None:
        p = pki()
        older = crl(p.root, number=1, last=NOW - 5 * DAY)
        newer = crl(p.root, (p.alice.serial_number,), number=2, last=NOW - DAY)
        self.assertEqual(verify([p.alice], trust(p.root[0], crls=(older, newer))).reason, "revoked")


class VerifyPinTests(SynchronousTestCase):
    def test_pinned_self_signed(self) -> None:
        cert = self_signed()
        verdict = verify([cert], TrustStore(), pins=frozenset({certificate_fingerprint(cert)}))
        self.assertEqual(
            (verdict.good, verdict.chains_to_ca, verdict.pinned, verdict.reason),
            (True, False, True, None),
        )

    def test_self_signed_not_pinned(self) -> None:
        cert = self_signed()
        verdict = verify([cert], trust(pki().root[0]), pins=frozenset({"00" * 32}))
        self.assertEqual(
            (verdict.good, verdict.pinned, verdict.reason), (False, False, "untrusted")
        )

    def test_pin_spelling(self) -> None:
        cert = self_signed()
        fingerprint = certificate_fingerprint(cert).upper()
        colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2))
        self.assertTrue(verify([cert], TrustStore(), pins=frozenset({colons})).good)

    def test_pinned_expired(self) -> None:
        cert = self_signed(start=NOW - 10 * DAY, days=5)
        pins = frozenset({certificate_fingerprint(cert)})
        self.assertEqual(verify([cert], TrustStore(), pins=pins).reason, "expired")

    def test_pinned_not_yet_valid(self) -> None:
        cert = self_signed(start=NOW + DAY)
        pins = frozenset({certificate_fingerprint(cert)})
        self.assertEqual(verify([cert], TrustStore(), pins=pins).reason, "not yet valid")

    def test_pinned_wrong_usage(self) -> None:
        cert = self_signed(eku=[SERVER_AUTH])
        pins = frozenset({certificate_fingerprint(cert)})
        self.assertEqual(verify([cert], TrustStore(), pins=pins).reason, "wrong usage")

    def test_pinned_with_client_auth(self) -> None:
        cert = self_signed(eku=[CLIENT_AUTH])
        pins = frozenset({certificate_fingerprint(cert)})
        self.assertTrue(verify([cert], TrustStore(), pins=pins).good)

    def test_pinned_self_signed_skips_revocation(self) -> None:
        p = pki()
        cert = self_signed()
        store = trust(p.root[0], crls=(crl(p.root),))
        self.assertTrue(verify([cert], store, pins=frozenset({certificate_fingerprint(cert)})).good)

    def test_pinned_and_chained_is_still_revocable(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.revoked.serial_number,)),))
        verdict = verify([p.revoked], store, pins=frozenset({certificate_fingerprint(p.revoked)}))
        self.assertEqual(
            (verdict.pinned, verdict.chains_to_ca, verdict.reason), (True, True, "revoked")
        )

    def test_pinned_from_an_unknown_ca(self) -> None:
        p = pki()
        pins = frozenset({certificate_fingerprint(p.other_alice)})
        verdict = verify([p.other_alice], trust(p.root[0]), pins=pins)
        self.assertEqual((verdict.good, verdict.chains_to_ca), (True, False))


def chain_of(intermediates: int) -> tuple[list[x509.Certificate], x509.Certificate]:
    """A leaf and `intermediates` CAs below a fresh root: (leaf first, without root; root)."""
    root = make_ca("Deep root", not_before=NOW - DAY, not_after=NOW + DAY, path_length=None)
    issuer = root
    cas: list[x509.Certificate] = []
    for depth in range(intermediates):
        issuer = issue_certificate(
            issuer[0],
            issuer[1],
            cn=f"CA {depth}",
            is_ca=True,
            eku=None,
            not_before=NOW - DAY,
            not_after=NOW + DAY,
        )
        cas.append(issuer[0])
    leaf = issue_certificate(
        issuer[0], issuer[1], cn="deep", not_before=NOW - DAY, not_after=NOW + DAY
    )[0]
    return [leaf, *reversed(cas)], root[0]


class VerifyChainLengthTests(SynchronousTestCase):
    def test_cap(self) -> None:
        self.assertEqual(MAX_CHAIN_LENGTH, 5)

    def test_chain_of_seven_presented(self) -> None:
        chain, root = chain_of(5)
        verdict = verify([*chain, root], trust(root))  # 7 certificates
        self.assertEqual((verdict.good, verdict.reason), (False, "chain too long"))
        self.assertEqual(verdict.common_name, "deep")

    def test_six_presented(self) -> None:
        chain, root = chain_of(5)
        self.assertEqual(verify(chain, trust(root)).reason, "chain too long")

    def test_path_of_six_via_the_store(self) -> None:
        chain, root = chain_of(4)
        # five presented, the root from the store makes a path of six
        verdict = verify(chain, trust(root))
        self.assertEqual((verdict.reason, verdict.chains_to_ca), ("chain too long", True))

    def test_path_of_five_is_fine(self) -> None:
        chain, root = chain_of(3)
        self.assertTrue(verify(chain, trust(root)).good)
        self.assertTrue(verify([*chain, root], trust(root)).good)

    def test_huge_chain(self) -> None:
        p = pki()
        verdict = verify([der(p.alice)] * 100_000, trust(p.root[0]))
        self.assertEqual(verdict.reason, "chain too long")

    def test_huge_chain_of_garbage_after_a_good_leaf(self) -> None:
        p = pki()
        verdict = verify([der(p.alice), *[b"\x00" * 10] * 10_000], trust(p.root[0]))
        self.assertEqual(verdict.reason, "chain too long")


def _name_cert(attributes: list[x509.NameAttribute]) -> x509.Certificate:
    root = pki().root
    from cryptography.hazmat.primitives import hashes

    key = new_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(root[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(root[1], hashes.SHA256())
    )


class VerifyOddInputTests(SynchronousTestCase):
    def assertUnparseable(self, chain: list[bytes]) -> CertificateVerdict:
        verdict = verify_certificate(chain, trust(pki().root[0]), now=NOW)
        self.assertEqual(
            (verdict.presented, verdict.good, verdict.reason), (True, False, "unparseable")
        )
        return verdict

    def test_garbage(self) -> None:
        verdict = self.assertUnparseable([b"not a certificate"])
        self.assertEqual(len(verdict.fingerprint or ""), 64)
        self.assertIsNone(verdict.subject)

    def test_empty_bytes(self) -> None:
        self.assertUnparseable([b""])

    def test_truncated(self) -> None:
        self.assertUnparseable([der(pki().alice)[:-10]])

    def test_trailing_bytes(self) -> None:
        self.assertUnparseable([der(pki().alice) + b"\x00"])

    def test_garbage_intermediate(self) -> None:
        self.assertUnparseable([der(pki().alice), b"\x30\x03\x02\x01\x01"])

    def test_invalid_utf8_in_common_name(self) -> None:
        cert = _name_cert([x509.NameAttribute(NameOID.COMMON_NAME, "abcZ")])
        data = der(cert)
        self.assertEqual(data.count(b"abcZ"), 1)
        self.assertUnparseable([data.replace(b"abcZ", b"ab\xff\xfe")])

    def test_nul_in_common_name(self) -> None:
        cert = _name_cert([x509.NameAttribute(NameOID.COMMON_NAME, "alice\x00.evil")])
        verdict = verify([cert], trust(pki().root[0]))
        self.assertTrue(verdict.good)
        self.assertEqual(verdict.common_name, "alice\x00.evil")
        self.assertNotIn("\x00", verdict.subject or "\x00")

    def test_control_characters_escaped_in_subject(self) -> None:
        cert = _name_cert(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "a\nb\r\x1b[31m\u202ec"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ünïcødé ok"),
            ]
        )
        subject = verify([cert], trust(pki().root[0])).subject or ""
        for char in "\n\r\x1b\u202e":
            self.assertNotIn(char, subject)
        self.assertIn("\\0a", subject)
        self.assertIn("Ünïcødé ok", subject)

    def test_several_common_names_name_nothing(self) -> None:
        cert = _name_cert(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                x509.NameAttribute(NameOID.COMMON_NAME, "bob"),
            ]
        )
        verdict = verify([cert], trust(pki().root[0]))
        self.assertTrue(verdict.good)
        self.assertIsNone(verdict.common_name)

    def test_no_common_name(self) -> None:
        cert = _name_cert([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")])
        verdict = verify([cert], trust(pki().root[0]))
        self.assertEqual((verdict.good, verdict.common_name, verdict.emails), (True, None, ()))

    def test_non_bytes_input(self) -> None:
        p = pki()
        verdict = verify_certificate(
            [bytearray(der(p.alice))],  # type: ignore[list-item]
            trust(p.root[0]),
            now=NOW,
        )
        self.assertTrue(verdict.good)
        weird = verify_certificate([None], trust(p.root[0]), now=NOW)  # type: ignore[list-item]
        self.assertEqual(weird.reason, "unparseable")

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=600))
    def test_random_bytes_never_raise(self, data: bytes) -> None:
        verdict = verify_certificate([data], trust(pki().root[0]), now=NOW)
        self.assertFalse(verdict.good)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_mutated_certificates_never_raise(self, data: st.DataObject) -> None:
        p = pki()
        original = bytearray(der(p.via_inter))
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(original) - 1))
            original[index] = data.draw(st.integers(0, 255))
        chain = [bytes(original), der(p.inter[0])]
        store = trust(p.root[0], crls=(crl(p.root), crl(p.inter)))
        with warnings.catch_warnings():
            # A mutated serial number may come out negative: cryptography warns that it
            # will refuse to parse it one day (then the verdict is "unparseable").
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            verdict = verify_certificate(chain, store, now=NOW)
        self.assertIsInstance(verdict, CertificateVerdict)
        if verdict.good:
            # a mutation that still verifies must have kept the signed part intact
            self.assertTrue(verdict.chains_to_ca)


class TrustStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-verify-"))
        self.addCleanup(shutil.rmtree, self.folder, True)

    def pem(self, name: str, obj: object) -> Path:
        return write_pem(self.folder / name, obj)  # type: ignore[arg-type]

    def test_several_certificates_per_file(self) -> None:
        p = pki()
        path = self.pem("ca.pem", [p.root[0], p.other[0]])
        store = load_trust_store(path, [])
        self.assertEqual(store.cas, (p.root[0], p.other[0]))
        self.assertFalse(store.checks_revocation)
        self.assertTrue(verify([p.other_alice], store).good)

    def test_no_client_ca(self) -> None:
        store = load_trust_store(None, [])
        self.assertEqual((store.cas, store.crls), ((), ()))

    def test_missing_ca_file(self) -> None:
        path = self.folder / "missing.pem"
        error = self.assertRaises(TrustStoreError, load_trust_store, path, [])
        self.assertEqual(error.path, path)
        self.assertIn(str(path), str(error))

    def test_corrupt_ca_file(self) -> None:
        path = self.folder / "ca.pem"
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
        error = self.assertRaises(TrustStoreError, load_trust_store, path, [])
        self.assertIn(str(path), str(error))
        path.write_bytes(b"hello")
        self.assertRaises(TrustStoreError, load_trust_store, path, [])

    def test_crls(self) -> None:
        p = pki()
        ca = self.pem("ca.pem", p.root[0])
        crl_path = self.pem("root.crl", crl(p.root, (p.revoked.serial_number,)))
        store = load_trust_store(ca, [crl_path])
        self.assertTrue(store.checks_revocation)
        self.assertEqual(store.crls[0].path, crl_path)
        self.assertEqual(verify([p.revoked], store).reason, "revoked")

    def test_missing_or_corrupt_crl(self) -> None:
        p = pki()
        ca = self.pem("ca.pem", p.root[0])
        missing = self.folder / "none.crl"
        error = self.assertRaises(TrustStoreError, load_trust_store, ca, [missing])
        self.assertEqual(error.path, missing)
        corrupt = self.pem("bad.crl", p.root[0])  # a certificate, not a CRL
        error = self.assertRaises(TrustStoreError, load_trust_store, ca, [corrupt])
        self.assertEqual(error.path, corrupt)

    def test_older_crl_refused(self) -> None:
        p = pki()
        ca = self.pem("ca.pem", p.root[0])
        first = load_trust_store(ca, [self.pem("root.crl", crl(p.root, number=5))])
        older_path = self.pem("root.crl", crl(p.root, (p.alice.serial_number,), number=4))
        second = load_trust_store(ca, [older_path], previous=first)
        self.assertEqual(second.crls, first.crls)
        self.assertEqual(len(second.warnings), 1)
        self.assertIn("number 4", second.warnings[0])
        self.assertIn("number 5", second.warnings[0])
        self.assertTrue(verify([p.alice], second).good)

    def test_newer_crl_accepted(self) -> None:
        p = pki()
        ca = self.pem("ca.pem", p.root[0])
        other_crl = self.pem("other.crl", crl(p.other, number=9))
        first = load_trust_store(ca, [self.pem("root.crl", crl(p.root, number=5)), other_crl])
        newer = self.pem("root.crl", crl(p.root, (p.alice.serial_number,), number=6))
        second = load_trust_store(ca, [newer, other_crl], previous=first)
        self.assertEqual(second.warnings, ())
        self.assertEqual(verify([p.alice], second).reason, "revoked")
        same = load_trust_store(ca, [newer, other_crl], previous=second)
        self.assertEqual(same.warnings, ())

    def test_crl_warnings(self) -> None:
        p = pki()
        soon = LoadedCRL(Path("soon.crl"), crl(p.root, next=NOW + 6 * DAY))
        later = LoadedCRL(Path("later.crl"), crl(p.other, next=NOW + 8 * DAY))
        past = LoadedCRL(Path("past.crl"), crl(p.inter, last=NOW - 9 * DAY, next=NOW - DAY))
        lines = crl_warnings(TrustStore(crls=(soon, later, past)), NOW)
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("soon.crl: "), lines)
        self.assertIn("Root CA", lines[0])
        self.assertTrue(lines[1].startswith("past.crl: "), lines)
        self.assertIn("revocation unknown", lines[1])
        self.assertEqual(crl_warnings(TrustStore(), NOW), [])


class StoreReuseTests(SynchronousTestCase):
    """Issue #9.9: OpenSSL stores (and their CRLs) are built once per loaded trust set, not
    at every verification, and the verdicts still follow the `now` passed in."""

    def count_stores(self) -> list[object]:
        made: list[object] = []
        original = crypto.X509Store

        def counting() -> crypto.X509Store:
            store = original()
            made.append(store)
            return store

        self.patch(crypto, "X509Store", counting)
        return made

    def test_one_build_per_trust_set(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.revoked.serial_number,)), crl(p.inter)))
        made = self.count_stores()
        for _ in range(5):
            self.assertTrue(verify([p.alice], store).good)
            self.assertEqual(verify([p.revoked], store).reason, "revoked")
            self.assertTrue(verify([p.via_inter, p.inter[0]], store).good)
        self.assertLessEqual(len(made), 2, "one store for path building, one with the CRLs")
        reloaded = trust(p.root[0], crls=(crl(p.root, (p.alice.serial_number,)),))
        self.assertEqual(verify([p.alice], reloaded).reason, "revoked")  # a new set: new stores
        self.assertLessEqual(len(made), 4)

    def test_stores_prepared_where_the_trust_set_is_loaded(self) -> None:
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.revoked.serial_number,)),))
        prepare_stores(store, NOW)
        made = self.count_stores()
        self.assertTrue(verify([p.alice], store).good)
        self.assertEqual(verify([p.revoked], store).reason, "revoked")
        self.assertEqual(made, [])

    def test_a_chain_checked_again_is_answered_from_memory(self) -> None:
        """OpenSSL spends milliseconds per check on a large CRL: the revocation answer for
        a chain is kept with the store of the CRLs valid now (a USER repeats the check)."""
        p = pki()
        store = trust(p.root[0], crls=(crl(p.root, (p.revoked.serial_number,)), crl(p.inter)))
        contexts: list[object] = []
        original = crypto.X509StoreContext

        def counting(*args: Any) -> crypto.X509StoreContext:
            contexts.append(args[0])
            return original(*args)

        self.patch(crypto, "X509StoreContext", counting)
        for _ in range(5):
            self.assertTrue(verify([p.via_inter, p.inter[0]], store).good)
            self.assertEqual(verify([p.revoked], store).reason, "revoked")
        # each call builds its path (10); the revocation checks ran once per chain (2 + 1)
        self.assertEqual(len(contexts), 10 + 3)
        # Past the root CRL's next update the set differs: nothing is answered from memory.
        short = trust(
            p.root[0],
            crls=(crl(p.root, (p.revoked.serial_number,), next=NOW + 10 * DAY), crl(p.inter)),
        )
        for now, reason in [(NOW, "revoked"), (NOW + 11 * DAY, "revocation unknown")] * 2:
            self.assertEqual(verify([p.revoked], short, now=now).reason, reason, now)
        for now, reason in [(NOW, None), (NOW + 11 * DAY, "revocation unknown")] * 2:
            self.assertEqual(verify([p.via_inter, p.inter[0]], short, now=now).reason, reason)

    def test_verdicts_follow_now_with_a_reused_store(self) -> None:
        """CRL and certificate dates are judged at each call's `now`, in any order, with
        OpenSSL's whole-second bounds (lastUpdate <= now <= nextUpdate, in seconds)."""
        p = pki()
        start = NOW - DAY / 2  # alice is valid from NOW - DAY
        first = crl(p.root, number=1, last=start, next=NOW + 2 * DAY)
        second = crl(p.root, (p.alice.serial_number,), number=2, last=NOW + DAY, next=NOW + 9 * DAY)
        store = trust(p.root[0], crls=(first, second))
        half = datetime.timedelta(milliseconds=500)
        expected = [
            (NOW, None),
            (NOW + 40 * DAY, "expired"),  # the leaf's own dates
            (NOW + DAY - half, None),  # the second CRL is not valid yet
            (NOW + DAY, "revoked"),  # ... and now it is
            (start - half, "revocation unknown"),  # before the first CRL
            (start, None),
            (NOW + 9 * DAY + half, "revoked"),  # nextUpdate's own second still counts
            (NOW + 9 * DAY + 2 * half, "revocation unknown"),  # both past their next update
            (NOW, None),
        ]
        for now, reason in expected * 2:
            self.assertEqual(verify([p.alice], store, now=now).reason, reason, now)
