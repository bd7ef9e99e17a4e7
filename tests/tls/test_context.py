"""securetransport.tls.context: credentials loading, per-session contexts, handshake records.

All handshakes are real TLS: pyOpenSSL Connections over memory BIOs, Twisted's
TLSMemoryBIOFactory pumped by iosim, or loopback sockets for startTLS.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from OpenSSL import SSL, crypto
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securetransport import pki
from securetransport.config import TLSConfig
from securetransport.tls.context import (
    DEFAULT_CIPHERS,
    SESSION_TIMEOUT,
    HandshakeInfo,
    TLSConfigError,
    connection_creator,
    handshake_info,
    load_server_credentials,
)
from tests.tls.helpers import (
    TLS12,
    TLS13,
    client_context,
    connect,
    exchange,
    make_pki,
    move,
)

X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_CERT_CHAIN_TOO_LONG = 22


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class LoadServerCredentialsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki()
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.cert = pki.write_pem(self.folder / "server.crt", [self.pki.server, self.pki.ca])
        self.key = pki.write_pem(self.folder / "server.key", self.pki.server_key)
        self.ca = pki.write_pem(self.folder / "ca.crt", self.pki.ca)

    def config(self, **changes: Any) -> TLSConfig:
        fields: dict[str, Any] = {
            "certificate": self.cert,
            "private_key": self.key,
            "client_ca": self.ca,
        }
        fields.update(changes)
        return TLSConfig(**fields)

    def error(self, config: TLSConfig) -> str:
        message = str(self.assertRaises(TLSConfigError, load_server_credentials, config))
        self.assertNotIn("\n", message)
        return message

    def test_loads_chain_key_and_client_cas(self) -> None:
        credentials = load_server_credentials(self.config(min_version="TLSv1.3"))
        self.assertEqual(credentials.chain, (self.pki.server, self.pki.ca))
        self.assertEqual(credentials.client_cas, (self.pki.ca,))
        self.assertEqual(credentials.min_version, "TLSv1.3")
        self.assertEqual(credentials.ciphers, DEFAULT_CIPHERS)
        self.assertEqual(credentials.warnings, ())
        self.assertNotIn("PRIVATE", repr(credentials))
        self.assertNotIn("private_key", repr(credentials))

    def test_no_client_ca(self) -> None:
        self.assertEqual(load_server_credentials(self.config(client_ca=None)).client_cas, ())

    def test_traditional_rsa_key(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert, _ = pki.issue_certificate(
            self.pki.ca, self.pki.ca_key, cn="localhost", key=key, eku=(pki.SERVER_AUTH,)
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self.assertIn(b"BEGIN RSA PRIVATE KEY", pem)
        self.key.write_bytes(pem)
        pki.write_pem(self.cert, cert)
        credentials = load_server_credentials(self.config())
        self.assertIsInstance(credentials.private_key, rsa.RSAPrivateKey)

    def test_missing_certificate(self) -> None:
        missing = self.folder / "nope.crt"
        self.assertEqual(
            self.error(self.config(certificate=missing)),
            f"tls.certificate: cannot read {missing}: No such file or directory",
        )

    def test_missing_key_and_client_ca(self) -> None:
        missing = self.folder / "nope"
        self.assertEqual(
            self.error(self.config(private_key=missing)),
            f"tls.private_key: cannot read {missing}: No such file or directory",
        )
        self.assertEqual(
            self.error(self.config(client_ca=missing)),
            f"tls.client_ca: cannot read {missing}: No such file or directory",
        )

    def test_unset(self) -> None:
        self.assertEqual(self.error(self.config(certificate=None)), "tls.certificate: not set")

    def test_key_does_not_match(self) -> None:
        pki.write_pem(self.key, pki.new_key())
        self.assertEqual(
            self.error(self.config()), "tls.private_key: does not match tls.certificate"
        )

    def test_not_pem(self) -> None:
        self.cert.write_bytes(b"garbage")
        self.assertTrue(self.error(self.config()).startswith("tls.certificate: no PEM certificate"))
        pki.write_pem(self.cert, self.pki.server)
        self.key.write_bytes(b"garbage")
        self.assertTrue(self.error(self.config()).startswith("tls.private_key: no PEM private key"))
        self.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        self.assertTrue(self.error(self.config()).startswith("tls.private_key: cannot parse"))

    def test_encrypted_key_is_not_supported(self) -> None:
        self.key.write_bytes(
            self.pki.server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        message = self.error(self.config())
        self.assertTrue(message.startswith("tls.private_key: "), message)
        self.assertIn("passphrases are not supported", message)

    def test_other_key_types_refused(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        cert, _ = pki.issue_certificate(self.pki.ca, self.pki.ca_key, cn="localhost", key=key)
        pki.write_pem(self.cert, cert)
        pki.write_pem(self.key, key)
        self.assertIn("use an RSA or EC key", self.error(self.config()))

    def test_bad_cipher_string(self) -> None:
        self.assertEqual(
            self.error(self.config(ciphers="NOPE")), 'tls.ciphers: no usable cipher in "NOPE"'
        )

    def test_ciphers_unusable_with_the_key_type(self) -> None:
        # The server key is EC: RSA-authenticated ciphers can never be negotiated.
        message = self.error(self.config(ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
        self.assertTrue(
            message.startswith('tls.ciphers: no usable cipher in "ECDHE-RSA-AES128-GCM-SHA256"'),
            message,
        )

    def test_custom_ciphers_kept(self) -> None:
        credentials = load_server_credentials(self.config(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
        self.assertEqual(credentials.ciphers, "ECDHE-ECDSA-AES128-GCM-SHA256")

    def test_key_readable_by_others_is_a_warning(self) -> None:
        os.chmod(self.key, 0o644)
        credentials = load_server_credentials(self.config())
        self.assertEqual(
            credentials.warnings,
            ("warning: tls.private_key: readable by other users (mode 0644); chmod 600",),
        )

    def test_expired_certificate_is_a_loud_warning(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        cert, _ = pki.issue_certificate(
            self.pki.ca,
            self.pki.ca_key,
            cn="localhost",
            key=self.pki.server_key,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        pki.write_pem(self.cert, [cert, self.pki.ca])
        (warning,) = load_server_credentials(self.config()).warnings
        self.assertTrue(warning.startswith("warning: tls.certificate: certificate 1"), warning)
        self.assertIn("EXPIRED", warning)

    def test_chain_out_of_order_is_a_warning(self) -> None:
        other_ca, _ = pki.make_ca("other CA")
        pki.write_pem(self.cert, [self.pki.server, other_ca])
        (warning,) = load_server_credentials(self.config()).warnings
        self.assertIn("tls.certificate: certificate 2 did not issue certificate 1", warning)


class SessionContextTests(SynchronousTestCase):
    """Protocol versions, ciphers, groups, renegotiation, session settings."""

    def setUp(self) -> None:
        self.pki = make_pki()
        self.factory = self.pki.factory()

    def test_settings(self) -> None:
        context = self.factory.new_session_context()
        options = context.set_options(0)  # returns the options in force
        for option in (SSL.OP_NO_COMPRESSION, SSL.OP_CIPHER_SERVER_PREFERENCE):
            self.assertTrue(options & option)
        self.assertTrue(options & getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000))
        self.assertFalse(options & SSL.OP_NO_TICKET, "stateless tickets must stay on")
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_SERVER)
        self.assertEqual(context.get_timeout(), SESSION_TIMEOUT)
        self.assertGreaterEqual(context.get_timeout(), 10 * 365 * 86400)
        self.assertEqual(context.get_verify_mode(), SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE)
        self.assertEqual(context.get_verify_depth(), 5)

    def test_each_call_builds_a_new_context_without_warnings(self) -> None:
        self.assertIsNot(self.factory.new_session_context(), self.factory.new_session_context())
        self.assertEqual(self.flushWarnings(), [])

    def test_tls12_and_tls13(self) -> None:
        for version, name in ((TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")):
            client, server = connect(
                client_context(max_version=version), self.factory.new_session_context()
            )
            info = handshake_info(server)
            self.assertEqual(info.tls_version, name)
            self.assertFalse(info.resumed)
            self.assertEqual(exchange(client, server, b"USER x\r\n"), b"USER x\r\n")
            if version == TLS12:
                self.assertIn(info.cipher, self.factory_ciphers())
                self.assertEqual(info.master_key, server.master_key())
            else:
                self.assertIsNone(info.master_key)
            self.assertNotIn("master_key", repr(info))

    def factory_ciphers(self) -> list[str]:
        connection = SSL.Connection(self.factory.new_session_context())
        return [name for name in connection.get_cipher_list() if not name.startswith("TLS_")]

    def test_tls12_ciphers_are_aead_with_forward_secrecy(self) -> None:
        names = self.factory_ciphers()
        self.assertTrue(names)
        for name in names:
            self.assertTrue(name.startswith("ECDHE-"), name)
            self.assertTrue("GCM" in name or "CHACHA20" in name, name)

    def assertRefused(self, client_ctx: SSL.Context, reason: str) -> None:
        error = self.assertRaises(
            SSL.Error, connect, client_ctx, self.factory.new_session_context()
        )
        self.assertIn(reason, str(error))

    def permissive_server(self) -> SSL.Context:
        """A server that allows everything: proves the client can speak what we refuse."""
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_cipher_list(b"ALL:@SECLEVEL=0")
        context.use_certificate(self.pki.server)
        context.use_privatekey(self.pki.server_key)
        return context

    def test_tls10_and_tls11_refused(self) -> None:
        for version, name in ((SSL.TLS1_VERSION, "TLSv1"), (SSL.TLS1_1_VERSION, "TLSv1.1")):
            old = client_context(min_version=0, max_version=version, ciphers=b"ALL:@SECLEVEL=0")
            _, server = connect(old, self.permissive_server())
            self.assertEqual(server.get_protocol_version_name(), name)
            self.assertRefused(old, "unsupported protocol")

    def test_min_version_tls13_refuses_tls12(self) -> None:
        self.factory = self.pki.factory(min_version="TLSv1.3")
        _, server = connect(client_context(), self.factory.new_session_context())
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.3")
        self.assertRefused(client_context(max_version=TLS12), "unsupported protocol")

    def test_non_aead_cipher_refused_under_tls12(self) -> None:
        for cipher in (b"ECDHE-ECDSA-AES128-SHA", b"ECDHE-ECDSA-AES256-SHA384"):
            weak = client_context(max_version=TLS12, ciphers=cipher)
            _, server = connect(weak, self.permissive_server())
            self.assertEqual(server.get_cipher_name(), cipher.decode())
            self.assertRefused(weak, "no shared cipher")

    def test_rsa_key_and_static_rsa_cipher_refused(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pki = make_pki(server_key=key)
        self.factory = self.pki.factory()
        _, server = connect(client_context(max_version=TLS12), self.factory.new_session_context())
        self.assertEqual(server.get_cipher_name(), "ECDHE-RSA-AES256-GCM-SHA384")
        self.assertRefused(client_context(max_version=TLS12, ciphers=b"AES128-SHA"), "no shared")

    def test_x25519_preferred(self) -> None:
        # TLS 1.2: the server picks the group by its own order from the client's list.
        client = client_context(max_version=TLS12, groups=b"P-256:X25519")
        _, server = connect(client, self.factory.new_session_context())
        self.assertEqual(server.get_group_name(), "x25519")
        # TLS 1.3: the group the client sent a key share for, when it is listed.
        for groups, expected in ((b"X25519:P-256", "x25519"), (b"P-384:P-256", "secp384r1")):
            client = client_context(max_version=TLS13, groups=groups)
            _, server = connect(client, self.factory.new_session_context())
            self.assertEqual(server.get_group_name(), expected)

    def test_client_renegotiation_refused(self) -> None:
        client, server = connect(
            client_context(max_version=TLS12), self.factory.new_session_context()
        )
        self.assertTrue(client.renegotiate())
        error = self.assertRaises(SSL.Error, renegotiate, client, server)
        self.assertIn("no renegotiation", str(error))
        self.assertEqual(server.total_renegotiations(), 0)


def renegotiate(client: SSL.Connection, server: SSL.Connection) -> None:
    for _ in range(5):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        move(client, server)
        try:
            server.recv(100)
        except SSL.WantReadError:
            pass
        move(server, client)


class ClientCertificateTests(SynchronousTestCase):
    """The certificate is requested, never fails the handshake, and is recorded."""

    def setUp(self) -> None:
        self.pki = make_pki()
        self.factory = self.pki.factory()

    def connect_with(
        self, version: int, certificate: Any = None, key: Any = None, chain: Any = ()
    ) -> tuple[SSL.Connection, HandshakeInfo]:
        client_ctx = client_context(
            max_version=version, certificate=certificate, key=key, extra_chain=chain
        )
        client, server = connect(client_ctx, self.factory.new_session_context())
        return client, handshake_info(server)

    def test_certificate_request_lists_the_ca(self) -> None:
        for version in (TLS12, TLS13):
            client, _ = self.connect_with(version)
            names = [name.der() for name in client.get_client_ca_list()]
            self.assertEqual(names, [self.pki.ca.subject.public_bytes()])

    def test_trusted_certificate(self) -> None:
        cert, key = self.pki.client_certificate()
        for version in (TLS12, TLS13):
            _, info = self.connect_with(version, cert, key)
            self.assertEqual(info.peer_chain, (_der(cert),))
            self.assertEqual(info.verify_errors, ())

    def test_untrusted_certificate_is_recorded_not_refused(self) -> None:
        other_ca, other_key = pki.make_ca("other CA")
        cert, key = pki.issue_certificate(other_ca, other_key, cn="mallory")
        for version in (TLS12, TLS13):
            client, info = self.connect_with(version, cert, key)
            self.assertEqual(info.peer_chain, (_der(cert),))
            self.assertIn((0, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY), info.verify_errors)
            self.assertTrue(client.get_protocol_version_name().startswith("TLSv1."))

    def test_no_certificate(self) -> None:
        for version in (TLS12, TLS13):
            _, info = self.connect_with(version)
            self.assertEqual(info.peer_chain, ())
            self.assertEqual(info.verify_errors, ())

    def test_chain_leaf_first_without_duplicates(self) -> None:
        self.pki = make_pki(path_length=None)
        self.factory = self.pki.factory()
        intermediate, intermediate_key = pki.issue_certificate(
            self.pki.ca, self.pki.ca_key, cn="intermediate", is_ca=True, eku=None
        )
        cert, key = pki.issue_certificate(intermediate, intermediate_key, cn="alice")
        # The client sends its leaf twice and the intermediate: recorded once each.
        _, info = self.connect_with(TLS13, cert, key, chain=[intermediate, cert])
        self.assertEqual(info.peer_chain, (_der(cert), _der(intermediate)))
        self.assertEqual(info.verify_errors, ())

    def test_chain_of_seven_does_not_fail_the_handshake(self) -> None:
        self.pki = make_pki(path_length=None)
        self.factory = self.pki.factory()
        issuer, issuer_key = self.pki.ca, self.pki.ca_key
        intermediates: list[x509.Certificate] = []
        for index in range(6):
            issuer, issuer_key = pki.issue_certificate(
                issuer, issuer_key, cn=f"intermediate {index}", is_ca=True, eku=None
            )
            intermediates.insert(0, issuer)
        cert, key = pki.issue_certificate(issuer, issuer_key, cn="alice")
        for version in (TLS12, TLS13):
            _, info = self.connect_with(version, cert, key, chain=intermediates)
            self.assertEqual(info.peer_chain, tuple(_der(c) for c in [cert, *intermediates]))
            self.assertIn(
                X509_V_ERR_CERT_CHAIN_TOO_LONG, [errno for _, errno in info.verify_errors]
            )

    def test_not_requested(self) -> None:
        cert, key = self.pki.client_certificate()
        client_ctx = client_context(certificate=cert, key=key)
        context = self.factory.new_session_context(request_client_certificate=False)
        self.assertEqual(context.get_verify_mode(), SSL.VERIFY_NONE)
        client, server = connect(client_ctx, context)
        self.assertEqual(client.get_client_ca_list(), [])
        self.assertEqual(handshake_info(server).peer_chain, ())

    def test_records_are_per_connection(self) -> None:
        other_ca, other_key = pki.make_ca("other CA")
        bad, bad_key = pki.issue_certificate(other_ca, other_key, cn="mallory")
        good, good_key = self.pki.client_certificate()
        context = self.factory.new_session_context()
        _, first = connect(client_context(certificate=bad, key=bad_key), context)
        _, second = connect(client_context(certificate=good, key=good_key), context)
        self.assertNotEqual(handshake_info(first).verify_errors, ())
        self.assertEqual(handshake_info(second).verify_errors, ())


class ServerTLSProtocol(protocol.Protocol):
    """Records the handshake and echoes what arrives over TLS."""

    def __init__(self) -> None:
        self.info: HandshakeInfo | None = None
        self.received = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data


@implementer(IHandshakeListener)
class HandshakeRecordingProtocol(ServerTLSProtocol):
    def handshakeCompleted(self) -> None:  # noqa: N802
        self.info = handshake_info(self.transport.getHandle())  # type: ignore[union-attr]


class ConnectionCreatorTests(SynchronousTestCase):
    """`connection_creator` with TLSMemoryBIOFactory (implicit FTPS), pumped in memory."""

    def setUp(self) -> None:
        self.pki = make_pki()
        self.factory = self.pki.factory()
        self.clock = task.Clock()
        self.client_options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate(crypto.X509.from_cryptography(self.pki.ca))
        )

    def test_provides_the_interface(self) -> None:
        creator = connection_creator(self.factory.new_session_context())
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, creator))

    def test_a_context_is_shared(self) -> None:
        context = self.factory.new_session_context()
        creator = connection_creator(context)
        first = creator.serverConnectionForTLS(None)
        second = creator.serverConnectionForTLS(None)
        self.assertIs(first.get_context(), context)
        self.assertIs(second.get_context(), context)

    def test_a_callable_gives_a_context_per_connection(self) -> None:
        creator = connection_creator(self.factory.new_session_context)
        first = creator.serverConnectionForTLS(None)
        second = creator.serverConnectionForTLS(None)
        self.assertIsNot(first.get_context(), second.get_context())

    def connect(self, server_factory: TLSMemoryBIOFactory) -> HandshakeRecordingProtocol:
        server = server_factory.buildProtocol(iosim.FakeAddress())
        client_factory = TLSMemoryBIOFactory(
            self.client_options,
            True,
            protocol.Factory.forProtocol(protocol.Protocol),
            clock=self.clock,
        )
        client = client_factory.buildProtocol(iosim.FakeAddress())
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)
        )
        client.wrappedProtocol.transport.write(b"USER alice\r\n")  # type: ignore[union-attr]
        for _ in range(3):
            self.clock.advance(0)  # Twisted aggregates small TLS writes until the next turn
            pump.flush()
        wrapped = server.wrappedProtocol
        assert isinstance(wrapped, HandshakeRecordingProtocol)
        return wrapped

    def test_implicit_listener(self) -> None:
        server_factory = TLSMemoryBIOFactory(
            connection_creator(self.factory.new_session_context),
            False,
            protocol.Factory.forProtocol(HandshakeRecordingProtocol),
            clock=self.clock,
        )
        first, second = self.connect(server_factory), self.connect(server_factory)
        for server in (first, second):
            self.assertEqual(server.received, b"USER alice\r\n")
            assert server.info is not None
            self.assertEqual(server.info.tls_version, "TLSv1.3")
            self.assertFalse(server.info.resumed)
        first_context = first.transport.getHandle().get_context()  # type: ignore[union-attr]
        second_context = second.transport.getHandle().get_context()  # type: ignore[union-attr]
        self.assertIsNot(first_context, second_context)


class AuthTLSLineProtocol(LineReceiver):
    """A minimal explicit-FTPS server: `AUTH TLS` -> 234 -> startTLS with our creator."""

    def __init__(self, creator: Any, done: defer.Deferred[HandshakeInfo]) -> None:
        self.creator = creator
        self.done = done
        self.info: HandshakeInfo | None = None

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if line == b"AUTH TLS":
            self.sendLine(b"234 AUTH TLS successful")
            self.transport.startTLS(self.creator)  # type: ignore[union-attr]
        elif line == b"PBSZ 0":
            self.info = handshake_info(self.transport.getHandle())  # type: ignore[union-attr]
            self.sendLine(f"200 {self.info.tls_version}".encode())
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self.info is None:
            self.done.errback(reason)
        else:
            self.done.callback(self.info)


class AuthTLSClient(LineReceiver):
    def __init__(self, options: Any, replies: list[bytes], closed: defer.Deferred[None]) -> None:
        self.options = options
        self.replies = replies
        self.closed = closed

    def connectionMade(self) -> None:  # noqa: N802
        self.sendLine(b"AUTH TLS")

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        self.replies.append(line)
        if line.startswith(b"234"):
            self.transport.startTLS(self.options)  # type: ignore[union-attr]
            self.sendLine(b"PBSZ 0")

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.closed.callback(None)


class StartTLSTests(TestCase):
    """`transport.startTLS(connection_creator(ctx))` on a real loopback connection."""

    timeout = 20

    @defer.inlineCallbacks
    def test_auth_tls(self) -> Any:
        test_pki = make_pki()
        context = test_pki.factory().new_session_context()
        done: defer.Deferred[HandshakeInfo] = defer.Deferred()
        closed: defer.Deferred[None] = defer.Deferred()
        server_factory = protocol.Factory()
        server_factory.protocol = lambda: AuthTLSLineProtocol(connection_creator(context), done)  # type: ignore[assignment, misc]
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        replies: list[bytes] = []
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate(crypto.X509.from_cryptography(test_pki.ca))
        )
        client_factory = protocol.ClientFactory()
        client_factory.protocol = lambda: AuthTLSClient(options, replies, closed)  # type: ignore[assignment, misc]
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)  # type: ignore[attr-defined]
        info = yield done
        yield closed
        self.assertEqual(info.tls_version, "TLSv1.3")
        self.assertEqual(info.peer_chain, ())
        self.assertEqual(replies, [b"234 AUTH TLS successful", b"200 TLSv1.3"])
