"""securetransport.tls.reuse: data connections must resume their own control session.

Real TLS throughout: pyOpenSSL client Connections against server Connections built on
per-session contexts, over memory BIOs, and once through Twisted's TLS layer.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import replace
from typing import Any

from OpenSSL import SSL
from twisted.internet import protocol, task
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from securetransport.tls import context as context_module
from securetransport.tls.context import (
    HandshakeInfo,
    connection_creator,
    handshake_info,
    ticket_key_name,
)
from securetransport.tls.reuse import (
    NOT_RESUMED,
    OTHER_SESSION,
    check_data_session,
    master_key_matches,
    server_session_id,
    session_key_digest,
    session_reused,
    session_ticket,
)
from tests.tls.helpers import TLS12, TLS13, client_context, close, connect, exchange, make_pki

VERSIONS = ((TLS12, "TLSv1.2"), (TLS13, "TLSv1.3"))


class SessionReusedTests(SynchronousTestCase):
    """The one private binding call, on its own."""

    def test_full_then_resumed(self) -> None:
        factory = make_pki().factory()
        for version, _ in VERSIONS:
            context = factory.new_session_context()
            client_ctx = client_context(max_version=version)
            client, server = connect(client_ctx, context)
            self.assertFalse(session_reused(server))
            self.assertFalse(session_reused(client))
            again, data = connect(client_ctx, context, client.get_session())
            self.assertTrue(session_reused(data))
            self.assertTrue(session_reused(again))

    def test_key_digest(self) -> None:
        factory = make_pki().factory()
        unused = SSL.Connection(factory.new_session_context())
        self.assertIsNone(session_key_digest(unused))
        _, server = connect(client_context(max_version=TLS12), factory.new_session_context())
        self.assertEqual(session_key_digest(server), hashlib.sha256(server.master_key()).digest())


class DataSessionTests(SynchronousTestCase):
    """A control connection, then data connections on the same or another context."""

    def setUp(self) -> None:
        self.factory = make_pki().factory()

    def control(self, version: int, **client_options: Any) -> tuple[Any, Any, Any, HandshakeInfo]:
        """(session context, client context, control client, control HandshakeInfo)."""
        session_ctx = self.factory.new_session_context()
        client_ctx = client_context(max_version=version, **client_options)
        client, server = connect(client_ctx, session_ctx)
        self.assertEqual(exchange(client, server, b"PBSZ 0\r\n"), b"PBSZ 0\r\n")
        self.control_server = server
        return session_ctx, client_ctx, client, handshake_info(server)

    def test_same_context_resumes(self) -> None:
        for version, name in VERSIONS:
            session_ctx, client_ctx, client, control = self.control(version)
            data_client, data_server = connect(client_ctx, session_ctx, client.get_session())
            info = handshake_info(data_server)
            self.assertEqual((info.tls_version, info.resumed), (name, True))
            self.assertTrue(info.resumed_from_control)
            self.assertIsNone(check_data_session(control, info, session_reused(data_server), True))
            expected = True if version == TLS12 else None
            self.assertEqual(master_key_matches(self.control_server, data_server), expected)
            self.assertEqual(exchange(data_client, data_server, b"data"), b"data")

    def test_other_session_context_cannot_be_resumed(self) -> None:
        """The hijack: a session of another control connection offered on our data port."""
        for version, _ in VERSIONS:
            session_ctx, _, _, control = self.control(version)
            _, attacker_ctx, attacker, _ = self.control(version)
            _, data_server = connect(attacker_ctx, session_ctx, attacker.get_session())
            info = handshake_info(data_server)
            self.assertFalse(session_reused(data_server))
            self.assertFalse(info.resumed_from_control)
            self.assertEqual(check_data_session(control, info, False, True), NOT_RESUMED)
            self.assertIsNone(check_data_session(control, info, False, False))

    def test_session_won_on_our_data_port_does_not_count(self) -> None:
        """The two-step hijack: a full handshake on the victim's data port yields a ticket
        of the victim's context; resuming it later must still be refused."""
        for version, _ in VERSIONS:
            session_ctx, client_ctx, client, control = self.control(version)
            attacker_ctx = client_context(max_version=version)
            attacker, first = connect(attacker_ctx, session_ctx)
            self.assertEqual(
                check_data_session(control, handshake_info(first), session_reused(first), True),
                NOT_RESUMED,
            )
            _, second = connect(attacker_ctx, session_ctx, attacker.get_session())
            info = handshake_info(second)
            self.assertTrue(session_reused(second), "resumed, but not our session")
            self.assertFalse(info.resumed_from_control)
            self.assertEqual(check_data_session(control, info, True, True), OTHER_SESSION)
            if version == TLS12:
                self.assertFalse(master_key_matches(self.control_server, second))
            # The legitimate client still resumes afterwards.
            _, data_server = connect(client_ctx, session_ctx, client.get_session())
            self.assertTrue(handshake_info(data_server).resumed_from_control)

    def test_many_transfers_resuming_the_control_or_the_latest_session(self) -> None:
        for version, _ in VERSIONS:
            session_ctx, client_ctx, client, control = self.control(version)
            latest = client.get_session()
            for index in range(12):
                # lftp offers the control session each time; curl its latest session.
                offered = client.get_session() if index % 2 else latest
                data_client, data_server = connect(client_ctx, session_ctx, offered)
                info = handshake_info(data_server)
                self.assertIsNone(check_data_session(control, info, info.resumed, True))
                latest = data_client.get_session()
                close(data_client, data_server)

    def test_tls12_session_ids_without_tickets(self) -> None:
        session_ctx, client_ctx, client, control = self.control(TLS12, options=SSL.OP_NO_TICKET)
        _, data_server = connect(client_ctx, session_ctx, client.get_session())
        info = handshake_info(data_server)
        self.assertTrue(info.resumed)
        self.assertIsNone(check_data_session(control, info, info.resumed, True))

    def test_unclean_data_close_keeps_the_session(self) -> None:
        """OpenSSL evicts the session of a Connection freed without close_notify; a TLS 1.2
        client resuming by session ID (no tickets) would then get 522 on every transfer."""
        session_ctx, client_ctx, client, control = self.control(TLS12, options=SSL.OP_NO_TICKET)
        for _ in range(3):
            data_client, data_server = connect(client_ctx, session_ctx, client.get_session())
            info = handshake_info(data_server)
            self.assertIsNone(check_data_session(control, info, info.resumed, True))
            data_client.shutdown()  # the client closes cleanly; the server side just drops
            del data_client, data_server
            gc.collect()

    def test_session_with_client_certificate_resumes(self) -> None:
        test_pki = make_pki()
        self.factory = test_pki.factory()
        cert, key = test_pki.client_certificate()
        for version, _ in VERSIONS:
            session_ctx, client_ctx, client, control = self.control(
                version, certificate=cert, key=key
            )
            self.assertEqual(len(control.peer_chain), 1)
            _, data_server = connect(client_ctx, session_ctx, client.get_session())
            info = handshake_info(data_server)
            self.assertTrue(info.resumed)
            self.assertEqual(info.peer_chain, control.peer_chain)
            self.assertIsNone(check_data_session(control, info, info.resumed, True))


class CheckDataSessionTests(SynchronousTestCase):
    """The pure decision, by table."""

    control12 = HandshakeInfo(
        "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", False, False, master_key=b"k" * 48
    )
    control13 = HandshakeInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", False, False)

    def test_table(self) -> None:
        good12 = replace(self.control12, resumed=True, resumed_from_control=True)
        good13 = replace(self.control13, resumed=True, resumed_from_control=True)
        rows: list[tuple[HandshakeInfo, HandshakeInfo, bool, bool, str | None]] = [
            (self.control13, good13, True, True, None),
            (self.control12, good12, True, True, None),
            (self.control13, replace(good13, resumed=False), False, True, NOT_RESUMED),
            (
                self.control13,
                replace(good13, resumed_from_control=False),
                True,
                True,
                OTHER_SESSION,
            ),
            (self.control12, replace(good12, master_key=b"x" * 48), True, True, OTHER_SESSION),
            (self.control12, replace(good12, master_key=None), True, True, OTHER_SESSION),
            (self.control13, good12, True, True, OTHER_SESSION),
            (self.control13, replace(good13, resumed=False), False, False, None),
            (self.control12, replace(good12, resumed_from_control=False), True, False, None),
        ]
        for control, data, reused, required, expected in rows:
            self.assertEqual(
                check_data_session(control, data, reused, required), expected, (data, reused)
            )

    def test_texts_name_the_cause(self) -> None:
        self.assertIn("not resumed from the control connection", NOT_RESUMED)
        self.assertIn("session reuse", NOT_RESUMED)
        self.assertNotIn("\n", NOT_RESUMED + OTHER_SESSION)


class SessionKeysTests(SynchronousTestCase):
    """The memory of issued session keys stays bounded and keeps the control's keys."""

    def test_bounded_lru_with_pinned_control_keys(self) -> None:
        keys = context_module._SessionKeys()
        keys._remember(b"control", pinned=True)
        limit = context_module.MAX_REMEMBERED_KEYS
        for index in range(limit):
            keys._remember(b"data %d" % index, pinned=False)
        self.assertTrue(keys._known(b"data 0"))  # used again: now the most recent
        for index in range(limit, limit + 10):
            keys._remember(b"data %d" % index, pinned=False)
        self.assertTrue(keys._known(b"control"))
        self.assertTrue(keys._known(b"data 0"))
        self.assertFalse(keys._known(b"data 1"))
        self.assertTrue(keys._known(b"data %d" % (limit + 9)))
        self.assertLessEqual(len(keys._recent), limit)


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientCreator:
    """A Twisted TLS client that offers a saved session, as curl and lftp do."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context
        self.session: SSL.Session | None = None
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        self.connection = SSL.Connection(self.context)
        if self.session is not None:
            self.connection.set_session(self.session)
        return self.connection


@implementer(IHandshakeListener)
class RecordingServer(protocol.Protocol):
    info: HandshakeInfo | None = None

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.info = handshake_info(self.transport.getHandle())  # type: ignore[union-attr]


class TwistedDataConnectionTests(SynchronousTestCase):
    """Control and data connections through TLSMemoryBIOFactory, one session context."""

    def connect(self, creator: Any, client: ResumingClientCreator) -> RecordingServer:
        clock = task.Clock()
        server_factory = TLSMemoryBIOFactory(
            creator, False, protocol.Factory.forProtocol(RecordingServer), clock=clock
        )
        client_factory = TLSMemoryBIOFactory(
            client, True, protocol.Factory.forProtocol(protocol.Protocol), clock=clock
        )
        server = server_factory.buildProtocol(iosim.FakeAddress())
        client_protocol = client_factory.buildProtocol(iosim.FakeAddress())
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client_protocol,
            iosim.makeFakeClient(client_protocol),
        )
        client_protocol.wrappedProtocol.transport.write(b"NOOP\r\n")  # type: ignore[union-attr]
        for _ in range(3):
            clock.advance(0)
            pump.flush()
        wrapped = server.wrappedProtocol
        assert isinstance(wrapped, RecordingServer) and wrapped.info is not None
        return wrapped

    def test_resume_through_twisted(self) -> None:
        factory = make_pki().factory()
        for version, name in VERSIONS:
            session_ctx = factory.new_session_context()
            creator = connection_creator(session_ctx)
            client = ResumingClientCreator(client_context(max_version=version))
            control = self.connect(creator, client).info
            assert control is not None and client.connection is not None
            client.session = client.connection.get_session()
            data = self.connect(creator, client).info
            assert data is not None
            self.assertEqual(data.tls_version, name)
            self.assertTrue(data.resumed_from_control)
            self.assertIsNone(check_data_session(control, data, data.resumed, True))
            # A data connection on a fresh context (another session's) does not resume.
            other = self.connect(connection_creator(factory.new_session_context()), client).info
            assert other is not None
            self.assertEqual(check_data_session(control, other, other.resumed, True), NOT_RESUMED)


class SessionDerTests(SynchronousTestCase):
    """The session ID and ticket read from a session's DER form (private bindings)."""

    def test_ids_and_tickets(self) -> None:
        factory = make_pki().factory()
        self.assertEqual(server_session_id(SSL.Connection(factory.new_session_context())), b"")
        context = factory.new_session_context()
        for version, options, has_id, has_ticket in (
            (TLS12, SSL.OP_NO_TICKET, True, False),
            (TLS12, 0, False, True),  # a ticket replaces the server's session ID
            (TLS13, 0, True, True),
        ):
            client, server = connect(client_context(max_version=version, options=options), context)
            session = client.get_session()
            assert session is not None
            self.assertEqual(len(server_session_id(server)) == 32, has_id, (version, options))
            ticket = session_ticket(session)
            self.assertEqual(len(ticket) > 64, has_ticket, (version, options))
            if has_ticket:
                self.assertEqual(ticket[:16], ticket_key_name(context))
