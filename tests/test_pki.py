"""Tests for securetransport.pki."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from twisted.trial.unittest import SynchronousTestCase

from securetransport.pki import (
    PKIError,
    init_pki,
    issue_certificate,
    load_certificate,
    make_ca,
    make_crl,
    write_pem,
)

NOW = datetime.datetime.now(datetime.UTC)  # fixed dates for certificates made with them


def now() -> datetime.datetime:
    """The time now: certificates made with default dates start 5 minutes before it, and
    the suite may reach these tests more than 5 minutes after they were imported."""
    return datetime.datetime.now(datetime.UTC)


DAY = datetime.timedelta(days=1)


def temp_dir(test: SynchronousTestCase) -> Path:
    """A new empty folder outside the repository, removed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="st-test-")).resolve()
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


def client_verifier(*anchors: x509.Certificate, max_depth: int | None = None) -> ClientVerifier:
    """cryptography's client verifier, allowing client certificates without a SAN."""
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    builder = PolicyBuilder().store(Store(list(anchors))).time(now())
    builder = builder.extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee
    )
    if max_depth is not None:
        builder = builder.max_chain_depth(max_depth)
    return builder.build_client_verifier()


def same_key(cert: x509.Certificate, key: Any) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))


class InitPKITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = temp_dir(self) / "pki"
        self.written = init_pki(self.folder, ["alice", "bob@example.com"])

    def load(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.folder / name).read_bytes())

    def key(self, name: str) -> object:
        return serialization.load_pem_private_key((self.folder / name).read_bytes(), None)

    def test_files_and_modes(self) -> None:
        names = [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "alice.crt",
            "alice.key",
            "bob@example.com.crt",
            "bob@example.com.key",
        ]
        self.assertEqual(self.written, [self.folder / n for n in names])
        self.assertEqual(sorted(os.listdir(self.folder)), sorted(names))
        self.assertEqual(mode(self.folder), 0o700)
        for name in names:
            self.assertEqual(mode(self.folder / name), 0o600 if name.endswith(".key") else 0o644)

    def test_keys_are_p256_and_match(self) -> None:
        for stem in ["ca", "server", "alice", "bob@example.com"]:
            key = self.key(f"{stem}.key")
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self.assertEqual(key.curve.name, "secp256r1")
            self.assertTrue(same_key(self.load(f"{stem}.crt"), key))
        self.assertIn(b"BEGIN PRIVATE KEY", (self.folder / "ca.key").read_bytes())

    def test_ca(self) -> None:
        ca = self.load("ca.crt")
        self.assertEqual(ca.issuer, ca.subject)
        basic = ext(ca, x509.BasicConstraints)
        self.assertTrue(basic.critical)
        self.assertTrue(basic.value.ca)
        self.assertEqual(basic.value.path_length, 0)
        usage = ext(ca, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        ski = ext(ca, x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(ca.public_key()))  # type: ignore[arg-type]
        ca.verify_directly_issued_by(ca)

    def test_validity(self) -> None:
        for name in ["ca.crt", "server.crt", "alice.crt"]:
            cert = self.load(name)
            checked = now()
            self.assertLess(cert.not_valid_before_utc, checked)
            remaining = (cert.not_valid_after_utc - checked).total_seconds()
            self.assertLess(abs(remaining - 825 * 86400), 600)

    def test_server(self) -> None:
        server = self.load("server.crt")
        ca = self.load("ca.crt")
        server.verify_directly_issued_by(ca)
        san = ext(server, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )
        self.assertEqual(
            list(ext(server, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.SERVER_AUTH]
        )
        self.assertFalse(ext(server, x509.BasicConstraints).value.ca)
        subjects: list[x509.DNSName | x509.IPAddress] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        for subject in subjects:
            verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
            chain = verifier.verify(server, [])
            self.assertEqual(chain[-1], ca)
        wrong = (
            PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("example.com"))
        )
        self.assertRaises(VerificationError, wrong.verify, server, [])

    def test_clients(self) -> None:
        ca = self.load("ca.crt")
        alice = self.load("alice.crt")
        self.assertEqual(cn(alice), "alice")
        self.assertEqual(
            list(ext(alice, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        usage = ext(alice, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertFalse(usage.key_cert_sign)
        self.assertRaises(x509.ExtensionNotFound, ext, alice, x509.SubjectAlternativeName)
        verified = client_verifier(ca).verify(alice, [])
        self.assertEqual(verified.chain, [alice, ca])
        bob = self.load("bob@example.com.crt")
        self.assertEqual(cn(bob), "bob@example.com")
        san = ext(bob, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.RFC822Name), ["bob@example.com"])

    def test_serials_differ(self) -> None:
        serials = {self.load(n).serial_number for n in ["ca.crt", "server.crt", "alice.crt"]}
        self.assertEqual(len(serials), 3)

    def test_refuses_to_overwrite(self) -> None:
        before = (self.folder / "ca.crt").read_bytes()
        error = self.assertRaises(PKIError, init_pki, self.folder, ["carol"])
        self.assertIn("ca.crt", str(error))
        self.assertFalse((self.folder / "carol.crt").exists())
        self.assertEqual((self.folder / "ca.crt").read_bytes(), before)

    def test_force_overwrites_and_keeps_modes(self) -> None:
        before = (self.folder / "ca.crt").read_bytes()
        os.chmod(self.folder / "ca.key", 0o644)
        init_pki(self.folder, ["alice"], force=True)
        self.assertNotEqual((self.folder / "ca.crt").read_bytes(), before)
        self.assertEqual(mode(self.folder / "ca.key"), 0o600)
        alice = self.load("alice.crt")
        alice.verify_directly_issued_by(self.load("ca.crt"))

    def test_existing_folder_mode_untouched(self) -> None:
        folder = temp_dir(self) / "t"
        folder.mkdir(mode=0o755)
        os.chmod(folder, 0o755)
        init_pki(folder, [], days=1)
        self.assertEqual(mode(folder), 0o755)
        self.assertEqual(
            sorted(os.listdir(folder)), ["ca.crt", "ca.key", "server.crt", "server.key"]
        )
        cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
        self.assertLess(cert.not_valid_after_utc, NOW + 2 * DAY)

    def test_bad_arguments(self) -> None:
        target = temp_dir(self) / "t"
        for users in [[".hidden"], ["a/b"], ["ca"], ["server"], [""]]:
            self.assertRaises(PKIError, init_pki, target, users)
        self.assertRaises(PKIError, init_pki, target, [], days=0)
        self.assertFalse(target.exists())
        file = temp_dir(self) / "t"
        file.write_text("x")
        self.assertRaises(PKIError, init_pki, file, [])


class HelperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca, self.ca_key = make_ca("Test Root", path_length=None)

    def test_expired_and_not_yet_valid(self) -> None:
        expired, _ = issue_certificate(
            self.ca, self.ca_key, cn="old", not_before=NOW - 10 * DAY, not_after=NOW - DAY
        )
        future, _ = issue_certificate(
            self.ca, self.ca_key, cn="new", not_before=NOW + DAY, not_after=NOW + 10 * DAY
        )
        verifier = client_verifier(self.ca)
        for cert in (expired, future):
            self.assertRaises(VerificationError, verifier.verify, cert, [])
        self.assertEqual(expired.not_valid_after_utc, (NOW - DAY).replace(microsecond=0))

    def test_wrong_usage_and_no_eku(self) -> None:
        server_only, _ = issue_certificate(
            self.ca, self.ca_key, cn="srv", eku=(ExtendedKeyUsageOID.SERVER_AUTH,)
        )
        self.assertRaises(VerificationError, client_verifier(self.ca).verify, server_only, [])
        no_eku, _ = issue_certificate(self.ca, self.ca_key, cn="any", eku=None, key_usage=None)
        self.assertRaises(x509.ExtensionNotFound, ext, no_eku, x509.ExtendedKeyUsage)
        self.assertRaises(x509.ExtensionNotFound, ext, no_eku, x509.KeyUsage)
        self.assertRaises(ValueError, issue_certificate, self.ca, self.ca_key, cn="x", eku=())

    def test_other_ca(self) -> None:
        other, other_key = make_ca("Other Root")
        cert, _ = issue_certificate(other, other_key, cn="alice")
        self.assertRaises(VerificationError, client_verifier(self.ca).verify, cert, [])
        self.assertEqual(len(client_verifier(other).verify(cert, []).chain), 2)

    def test_intermediate_chain(self) -> None:
        inter, inter_key = issue_certificate(
            self.ca, self.ca_key, cn="Intermediate", is_ca=True, eku=None, path_length=0
        )
        self.assertTrue(ext(inter, x509.BasicConstraints).value.ca)
        self.assertEqual(
            ext(inter, x509.AuthorityKeyIdentifier).value.key_identifier,
            ext(self.ca, x509.SubjectKeyIdentifier).value.digest,
        )
        leaf, _ = issue_certificate(inter, inter_key, cn="alice", san_email=["alice@example.com"])
        verified = client_verifier(self.ca).verify(leaf, [inter])
        self.assertEqual(verified.chain, [leaf, inter, self.ca])
        self.assertRaises(
            VerificationError,
            client_verifier(self.ca, max_depth=0).verify,
            leaf,
            [inter],
        )

    def test_pathlen_zero_ca_cannot_sign_a_ca(self) -> None:
        root, root_key = make_ca("Strict Root")
        inter, inter_key = issue_certificate(root, root_key, cn="Sub", is_ca=True, eku=None)
        leaf, _ = issue_certificate(inter, inter_key, cn="alice")
        self.assertRaises(VerificationError, client_verifier(root).verify, leaf, [inter])

    def test_san_and_given_key(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert, returned = issue_certificate(
            self.ca,
            self.ca_key,
            cn="host",
            san_dns=["a.example"],
            san_ip=["192.0.2.1", ipaddress.ip_address("2001:db8::1")],
            san_email=["x@example.com"],
            key=key,
            serial=12345,
        )
        self.assertIs(returned, key)
        self.assertTrue(same_key(cert, key))
        self.assertEqual(cert.serial_number, 12345)
        san = ext(cert, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["a.example"])
        self.assertEqual(len(san.get_values_for_type(x509.IPAddress)), 2)
        self.assertEqual(san.get_values_for_type(x509.RFC822Name), ["x@example.com"])

    def test_ed25519_ca(self) -> None:
        ca, ca_key = make_ca("Ed Root", key=ed25519.Ed25519PrivateKey.generate())
        cert, _ = issue_certificate(ca, ca_key, cn="alice")
        cert.verify_directly_issued_by(ca)

    def test_crl(self) -> None:
        crl = make_crl(
            self.ca, self.ca_key, [7, 9], last_update=NOW - DAY, next_update=NOW + DAY, crl_number=3
        )
        self.assertTrue(crl.is_signature_valid(self.ca_key.public_key()))  # type: ignore[arg-type]
        self.assertEqual(crl.issuer, self.ca.subject)
        self.assertEqual(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 3)
        self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(7))
        self.assertIsNone(crl.get_revoked_certificate_by_serial_number(8))
        self.assertEqual(crl.next_update_utc, (NOW + DAY).replace(microsecond=0))
        empty = make_crl(
            self.ca, self.ca_key, [], last_update=NOW, next_update=NOW + DAY, crl_number=4
        )
        self.assertEqual(len(empty), 0)


class FileHelperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = temp_dir(self)
        self.ca, self.ca_key = make_ca()
        self.leaf, self.leaf_key = issue_certificate(self.ca, self.ca_key, cn="alice")

    def test_write_and_load(self) -> None:
        cert_path = write_pem(self.folder / "a.crt", self.leaf)
        key_path = write_pem(self.folder / "a.key", self.leaf_key)
        self.assertEqual(mode(cert_path), 0o644)
        self.assertEqual(mode(key_path), 0o600)
        self.assertEqual(load_certificate(cert_path), self.leaf)
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        self.assertTrue(same_key(self.leaf, key))

    def test_chain_crl_and_mode(self) -> None:
        chain = write_pem(self.folder / "chain.pem", [self.leaf, self.ca], mode=0o640)
        self.assertEqual(mode(chain), 0o640)
        self.assertEqual(x509.load_pem_x509_certificates(chain.read_bytes()), [self.leaf, self.ca])
        self.assertEqual(load_certificate(chain), self.leaf)
        crl = make_crl(
            self.ca, self.ca_key, [1], last_update=NOW, next_update=NOW + DAY, crl_number=1
        )
        path = write_pem(self.folder / "ca.crl", crl)
        self.assertEqual(x509.load_pem_x509_crl(path.read_bytes()), crl)

    def test_overwrite_resets_mode(self) -> None:
        path = self.folder / "k.pem"
        path.write_text("old")
        os.chmod(path, 0o666)
        write_pem(path, self.leaf_key)
        self.assertEqual(mode(path), 0o600)
        self.assertNotIn(b"old", path.read_bytes())

    def test_load_der_and_errors(self) -> None:
        der = self.folder / "a.der"
        der.write_bytes(self.leaf.public_bytes(serialization.Encoding.DER))
        self.assertEqual(load_certificate(der), self.leaf)
        junk = self.folder / "junk.pem"
        junk.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        self.assertRaises(PKIError, load_certificate, junk)
        (self.folder / "empty").write_bytes(b"")
        self.assertRaises(PKIError, load_certificate, self.folder / "empty")
        key_only = write_pem(self.folder / "key.pem", self.leaf_key)
        self.assertRaises(PKIError, load_certificate, key_only)
        self.assertRaises(PKIError, load_certificate, self.folder / "missing.pem")

    def test_malformed_extension_refused_at_load(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bad")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + DAY)
            .add_extension(x509.ExtendedKeyUsage([]), critical=False)
            .sign(key, hashes.SHA256())
        )
        path = write_pem(self.folder / "bad.crt", cert)
        error = self.assertRaises(PKIError, load_certificate, path)
        self.assertIn("extension", str(error))
