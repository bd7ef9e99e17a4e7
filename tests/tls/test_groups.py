"""securetransport.tls.groups: data connections resuming a sibling control session.

Real TLS throughout: ClientHellos made by pyOpenSSL clients, server Connections on
per-session contexts over memory BIOs, and once through Twisted's TLS layer.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet import protocol, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from securetransport.tls.context import handshake_info, ticket_key_name
from securetransport.tls.groups import (
    NO_OFFER,
    SIBLING_LOGIN_WAIT,
    SIBLING_POLL,
    DataConnectionCreator,
    GroupMember,
    RoutedConnection,
    SessionGroups,
    SessionOffer,
    choose_member,
    read_session_offer,
)
from securetransport.tls.reuse import (
    NOT_FROM_ACCOUNT,
    NOT_RESUMED,
    OFFERED_OTHER,
    OTHER_SESSION,
    server_session_id,
    session_ticket,
)
from tests.tls.helpers import TLS12, TLS13, client_context, connect, exchange, handshake

VERSIONS = ((TLS12, "TLSv1.2"), (TLS13, "TLSv1.3"))


def client_hello(client_ctx: SSL.Context, session: SSL.Session | None = None) -> bytes:
    """The bytes of the ClientHello a client Connection sends first."""
    client = SSL.Connection(client_ctx)
    client.set_connect_state()
    if session is not None:
        client.set_session(session)
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    return client.bio_read(1 << 20)


class ReadSessionOfferTests(SynchronousTestCase):
    """The ClientHello reader: what real clients offer, and never an exception."""

    def setUp(self) -> None:
        from tests.tls.helpers import make_pki

        self.factory = make_pki().factory()
        self.clients: list[SSL.Connection] = []

    def session(self, version: int, options: int = 0) -> tuple[SSL.Context, SSL.Session, Any]:
        context = self.factory.new_session_context()
        client_ctx = client_context(max_version=version, options=options)
        client, server = connect(client_ctx, context)
        self.clients.append(client)  # freed without a TLS shutdown, its session would be spoilt
        session = client.get_session()
        assert session is not None
        return client_ctx, session, server

    def test_fresh_hellos_offer_nothing(self) -> None:
        tls12 = read_session_offer(client_hello(client_context(max_version=TLS12)))
        self.assertEqual(tls12, SessionOffer(b"", (), False))
        self.assertFalse(tls12 is None or tls12.offered)
        tls13 = read_session_offer(client_hello(client_context()))
        assert tls13 is not None
        self.assertTrue(tls13.offers_tls13)
        self.assertEqual(len(tls13.session_id), 32)  # middlebox compatibility: random
        self.assertFalse(tls13.offered)

    def test_tickets_start_with_the_context_key_name(self) -> None:
        for version, _ in VERSIONS:
            client_ctx, session, server = self.session(version)
            offer = read_session_offer(client_hello(client_ctx, session))
            assert offer is not None
            self.assertTrue(offer.offered)
            self.assertEqual(offer.tickets, (session_ticket(session),))
            self.assertEqual(offer.key_names, (ticket_key_name(server.get_context()),))

    def test_tls12_session_id_without_tickets(self) -> None:
        client_ctx, session, server = self.session(TLS12, SSL.OP_NO_TICKET)
        offer = read_session_offer(client_hello(client_ctx, session))
        assert offer is not None
        self.assertEqual(offer.tickets, ())
        self.assertEqual(offer.session_id, server_session_id(server))
        self.assertEqual(len(offer.session_id), 32)
        self.assertTrue(offer.offered)

    def test_incomplete_then_complete(self) -> None:
        client_ctx, session, _ = self.session(TLS13)
        hello = client_hello(client_ctx, session)
        for cut in range(0, len(hello), 7):
            self.assertIsNone(read_session_offer(hello[:cut]), cut)
        self.assertIsNotNone(read_session_offer(hello))

    def test_hello_split_over_records(self) -> None:
        client_ctx, session, _ = self.session(TLS12)
        hello = client_hello(client_ctx, session)
        body = hello[5:]
        split = b"".join(
            hello[:1] + hello[1:3] + len(part).to_bytes(2, "big") + part
            for part in (body[:50], body[50:120], body[120:])
        )
        self.assertEqual(read_session_offer(split), read_session_offer(hello))

    def test_not_a_client_hello(self) -> None:
        for data in (
            b"RETR f\r\n",
            b"\x17\x03\x03\x00\x05hello",  # application data
            b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello
            b"\x16\x03\x01\x00\x00",  # empty record
            b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # ClientHello too short to parse
        ):
            self.assertEqual(read_session_offer(data), NO_OFFER, data)
        endless = b"\x16\x03\x01\x40\x00\x01\xff\xff\xff" + b"\x00" * 70_000
        self.assertEqual(read_session_offer(endless), NO_OFFER)

    def test_never_raises(self) -> None:
        client_ctx, session, _ = self.session(TLS13)
        hello = bytearray(client_hello(client_ctx, session))
        rng = __import__("random").Random(15)
        for _ in range(2000):
            mutated = bytearray(hello)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            read_session_offer(bytes(mutated[: rng.randrange(len(mutated) + 1)]))
        for _ in range(200):
            read_session_offer(b"\x16" + os.urandom(rng.randrange(600)))


class ByteByByteTests(SynchronousTestCase):
    """A ClientHello that arrives one byte at a time is read twice per TLS record."""

    def test_one_read_per_record(self) -> None:
        from securetransport.tls import groups as groups_module
        from tests.tls.helpers import make_pki

        factory = make_pki().factory()
        control = Control(factory, TLS13)
        hello = client_hello(control.client_ctx, control.session())
        body = hello[5:]
        split = b"".join(
            hello[:3] + len(part).to_bytes(2, "big") + part
            for part in (body[:300], body[300:900], body[900:])
        )
        self.assertEqual(groups_module.bytes_wanted(split[:3]), 5)
        self.assertEqual(groups_module.bytes_wanted(split[:10]), 305)
        self.assertEqual(groups_module.bytes_wanted(split[:305]), 310)
        reads: list[int] = []
        real_read = groups_module.read_session_offer

        def counting(data: bytes) -> Any:
            reads.append(len(data))
            return real_read(data)

        self.patch(groups_module, "read_session_offer", counting)
        routed = RoutedConnection(lambda offer, final: (control.context, offer))
        for index in range(len(split)):
            self.assertEqual(routed.bio_write(split[index : index + 1]), 1)
        # Once a record header is in, once the record is: never once per byte.
        self.assertEqual(reads, [5, 305, 310, 910, 915, len(split)])
        self.assertIsNotNone(routed.connection)
        self.assertEqual(routed.chosen.key_names, (ticket_key_name(control.context),))


class ChooseMemberTests(SynchronousTestCase):
    """The routing rule, by table."""

    def member(self, key: bytes, session_id: bytes = b"") -> GroupMember:
        return GroupMember("192.0.2.1", "alice", None, None, key, session_id)  # type: ignore[arg-type]

    def test_table(self) -> None:
        own, b, c = self.member(b"A" * 16), self.member(b"B" * 16), self.member(b"", b"S" * 32)
        members = (own, b, c)
        ticket = b"B" * 16 + b"rest of ticket"
        rows = [
            (NO_OFFER, own),
            (SessionOffer(tickets=(ticket,)), b),
            (SessionOffer(tickets=(b"A" * 16 + b"x", ticket)), own),  # the client's order
            (SessionOffer(tickets=(b"Z" * 16 + b"x", ticket)), b),
            (SessionOffer(tickets=(b"Z" * 16 + b"x",)), own),
            (SessionOffer(tickets=(b"B" * 16,)), own),  # too short to be a ticket
            (SessionOffer(session_id=b"S" * 32), c),
            (SessionOffer(session_id=b"S" * 32, tickets=(b"Z" * 17,)), own),
            (SessionOffer(session_id=b"T" * 32), own),
        ]
        for offer, expected in rows:
            self.assertIs(choose_member(offer, own, members), expected, offer)
        self.assertIs(choose_member(SessionOffer(tickets=(ticket,)), own, (own,)), own)


class SessionGroupsTests(SynchronousTestCase):
    def test_join_leave(self) -> None:
        from tests.tls.helpers import make_pki

        factory = make_pki().factory()
        groups = SessionGroups()
        joined = []
        for address, account in (
            ("192.0.2.1", "alice"),
            ("192.0.2.1", "alice"),
            ("192.0.2.1", "bob"),
        ):
            context = factory.new_session_context()
            _, server = connect(
                client_context(max_version=TLS12, options=SSL.OP_NO_TICKET), context
            )
            joined.append(groups.join(address, account, context, server, handshake_info(server)))
        a1, a2, b1 = joined
        self.assertEqual(groups.members("192.0.2.1", "alice"), (a1, a2))
        self.assertEqual(groups.members("192.0.2.2", "alice"), ())
        self.assertEqual(groups.members("192.0.2.1", "bob"), (b1,))
        self.assertEqual(len(a1.key_name), 16)
        self.assertNotEqual(a1.key_name, a2.key_name)
        self.assertEqual(len(a1.session_id), 32)
        self.assertIn(a1, groups)
        groups.leave(a1)
        groups.leave(a1)  # twice: harmless
        self.assertNotIn(a1, groups)
        self.assertEqual(groups.members("192.0.2.1", "alice"), (a2,))
        groups.leave(a2)
        groups.leave(b1)
        self.assertEqual(len(groups), 0)
        self.assertEqual(groups._groups, {})


class Control:
    """A logged-in control connection: its client context, client and server Connections."""

    def __init__(self, factory: Any, version: int, options: int = 0) -> None:
        self.context = factory.new_session_context()
        self.client_ctx = client_context(max_version=version, options=options)
        self.client, self.server = connect(self.client_ctx, self.context)
        self.assert_works()
        self.info = handshake_info(self.server)

    def assert_works(self) -> None:
        assert exchange(self.client, self.server, b"NOOP\r\n") == b"NOOP\r\n"

    def session(self) -> SSL.Session:
        session = self.client.get_session()
        assert session is not None
        return session


class RoutedDataTests(SynchronousTestCase):
    """Data connections through `DataConnectionCreator`, handshaken in memory."""

    def setUp(self) -> None:
        from tests.tls.helpers import make_pki

        self.factory = make_pki().factory()
        self.groups = SessionGroups()

    def login(self, control: Control, account: str = "alice", address: str = "192.0.2.1") -> Any:
        return self.groups.join(address, account, control.context, control.server, control.info)

    def data(
        self,
        creator: DataConnectionCreator,
        client_ctx: SSL.Context,
        session: SSL.Session | None,
    ) -> tuple[SSL.Connection, Any]:
        client = SSL.Connection(client_ctx)
        client.set_connect_state()
        if session is not None:
            client.set_session(session)
        routed = creator.serverConnectionForTLS(None)
        routed.set_accept_state()
        handshake(client, routed)
        return client, routed

    def creator(self, control: Control, member: Any, reuse: Any = "account") -> Any:
        return DataConnectionCreator(control.context, control.info, reuse, member, self.groups)

    def test_sibling_session_resumes_and_is_accepted(self) -> None:
        for version, name in VERSIONS:
            a, b = Control(self.factory, version), Control(self.factory, version)
            member_a, member_b = self.login(a), self.login(b)
            creator = self.creator(a, member_a)
            # A shared client session cache: b's session offered on a's data connection.
            client, routed = self.data(creator, b.client_ctx, b.session())
            self.assertIsInstance(routed, RoutedConnection)
            self.assertIs(routed.chosen, member_b)
            result = creator.check(routed)
            self.assertEqual((result.problem, result.sibling), (None, True))
            self.assertEqual((result.info.tls_version, result.info.resumed), (name, True))
            self.assertEqual(exchange(client, routed.connection, b"data"), b"data")
            # The data connection's new session (TLS 1.3: a new ticket) stays in b's line.
            _, again = self.data(creator, b.client_ctx, client.get_session())
            self.assertEqual(creator.check(again).problem, None)
            # Its own session still works, on its own Context.
            _, own = self.data(creator, a.client_ctx, a.session())
            self.assertIs(own.chosen, member_a)
            self.assertEqual(
                (creator.check(own).problem, creator.check(own).sibling), (None, False)
            )
            self.groups.leave(member_a)
            self.groups.leave(member_b)

    def test_tls12_sibling_by_session_id(self) -> None:
        a = Control(self.factory, TLS12, SSL.OP_NO_TICKET)
        b = Control(self.factory, TLS12, SSL.OP_NO_TICKET)
        member_a, member_b = self.login(a), self.login(b)
        creator = self.creator(a, member_a)
        _, routed = self.data(creator, b.client_ctx, b.session())
        self.assertIs(routed.chosen, member_b)
        self.assertIsNone(creator.check(routed).problem)

    def test_other_account_address_or_no_login_is_refused(self) -> None:
        for version, _ in VERSIONS:
            a = Control(self.factory, version)
            creator = self.creator(a, self.login(a))
            bob = Control(self.factory, version)
            self.login(bob, account="bob")
            elsewhere = Control(self.factory, version)
            self.login(elsewhere, address="192.0.2.2")
            not_logged_in = Control(self.factory, version)
            for other in (bob, elsewhere, not_logged_in):
                _, routed = self.data(creator, other.client_ctx, other.session())
                result = creator.check(routed)
                self.assertFalse(result.info.resumed)
                self.assertEqual((result.problem, result.sibling), (NOT_FROM_ACCOUNT, False))
            _, fresh = self.data(creator, client_context(max_version=version), None)
            self.assertEqual(creator.check(fresh).problem, NOT_RESUMED)

    def test_a_member_that_left_no_longer_counts(self) -> None:
        for version, _ in VERSIONS:
            a, b = Control(self.factory, version), Control(self.factory, version)
            creator = self.creator(a, self.login(a))
            member_b = self.login(b)
            self.groups.leave(member_b)  # b logged out (or REIN, or closed)
            _, routed = self.data(creator, b.client_ctx, b.session())
            self.assertEqual(creator.check(routed).problem, NOT_FROM_ACCOUNT)
            # Leaving between the ClientHello and the check: refused too.
            member_b = self.login(b)
            _, routed = self.data(creator, b.client_ctx, b.session())
            self.assertIs(routed.chosen, member_b)
            self.groups.leave(member_b)
            self.assertEqual(creator.check(routed).problem, NOT_FROM_ACCOUNT)

    def test_session_won_on_a_sibling_data_port_does_not_count(self) -> None:
        """The two-step hijack, through a sibling: a full handshake routed to nobody gives
        a ticket of the victim's own Context that is not in its line."""
        for version, _ in VERSIONS:
            a, b = Control(self.factory, version), Control(self.factory, version)
            creator = self.creator(a, self.login(a))
            self.login(b)
            attacker_ctx = client_context(max_version=version)
            attacker, first = self.data(creator, attacker_ctx, None)
            self.assertEqual(creator.check(first).problem, NOT_RESUMED)
            _, second = self.data(creator, attacker_ctx, attacker.get_session())
            result = creator.check(second)
            self.assertTrue(result.info.resumed)
            self.assertEqual(result.problem, OTHER_SESSION)

    def test_required_names_the_shared_cache(self) -> None:
        """ "required": a sibling's session is refused, and the text says what happened."""
        for version, _ in VERSIONS:
            a, b = Control(self.factory, version), Control(self.factory, version)
            creator = self.creator(a, None, reuse="required")
            _, routed = self.data(creator, b.client_ctx, b.session())
            self.assertEqual(creator.check(routed).problem, OFFERED_OTHER)
            _, fresh = self.data(creator, client_context(max_version=version), None)
            self.assertEqual(creator.check(fresh).problem, NOT_RESUMED)
            _, own = self.data(creator, a.client_ctx, a.session())
            self.assertIsNone(creator.check(own).problem)
            # Even with a group around, "required" routes nowhere else.
            self.login(a)
            self.login(b)
            _, routed = self.data(creator, b.client_ctx, b.session())
            self.assertIs(routed.chosen, None)
            self.assertEqual(creator.check(routed).problem, OFFERED_OTHER)

    def test_off_makes_plain_connections(self) -> None:
        a = Control(self.factory, TLS13)
        creator = self.creator(a, None, reuse="off")
        self.assertIsInstance(creator.serverConnectionForTLS(None), SSL.Connection)
        _, data = self.data(creator, client_context(), None)
        self.assertIsNone(creator.check(data).problem)


@implementer(IHandshakeListener)
class _Recorder(protocol.Protocol):
    done = False

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.done = True


class TwistedWaitTests(SynchronousTestCase):
    """Through Twisted's TLS layer: the handshake waits for a sibling still logging in."""

    def setUp(self) -> None:
        from tests.tls.helpers import make_pki

        self.factory = make_pki().factory()
        self.groups = SessionGroups()
        self.clock = task.Clock()
        self.logging_in = True

    def connect(self, creator: DataConnectionCreator, client_ctx: SSL.Context, session: Any) -> Any:
        server_factory = TLSMemoryBIOFactory(
            creator, False, protocol.Factory.forProtocol(_Recorder), clock=self.clock
        )
        server = server_factory.buildProtocol(iosim.FakeAddress())
        client = SSL.Connection(client_ctx)
        client.set_connect_state()
        client.set_session(session)
        transport = iosim.FakeTransport(server, isServer=True)
        server.makeConnection(transport)
        return server, client, transport

    def pump(self, server: Any, client: SSL.Connection, transport: Any) -> None:
        for _ in range(6):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                server.dataReceived(client.bio_read(1 << 20))
            except SSL.WantReadError:
                pass
            written = transport.stream
            transport.stream = []
            if written:
                client.bio_write(b"".join(written))

    def test_waits_then_resumes_when_the_sibling_logs_in(self) -> None:
        for version, _ in VERSIONS:
            a, b = Control(self.factory, version), Control(self.factory, version)
            member_a = self.groups.join("192.0.2.1", "alice", a.context, a.server, a.info)
            creator = DataConnectionCreator(
                a.context,
                a.info,
                "account",
                member_a,
                self.groups,
                self.clock,
                lambda: self.logging_in,
            )
            server, client, transport = self.connect(creator, b.client_ctx, b.session())
            self.pump(server, client, transport)
            routed = server.getHandle()
            self.assertIsNone(routed.connection, "decided before b logged in")
            self.clock.advance(SIBLING_POLL * 3)
            self.assertIsNone(routed.connection)
            member_b = self.groups.join("192.0.2.1", "alice", b.context, b.server, b.info)
            self.clock.advance(SIBLING_POLL)
            self.assertIs(routed.chosen, member_b)
            self.pump(server, client, transport)
            self.assertTrue(server.wrappedProtocol.done)
            self.assertEqual(creator.check(routed).problem, None)
            self.groups.leave(member_a)
            self.groups.leave(member_b)

    def test_gives_up_after_the_wait(self) -> None:
        a, stranger = Control(self.factory, TLS13), Control(self.factory, TLS13)
        member_a = self.groups.join("192.0.2.1", "alice", a.context, a.server, a.info)
        creator = DataConnectionCreator(
            a.context, a.info, "account", member_a, self.groups, self.clock, lambda: True
        )
        server, client, transport = self.connect(creator, stranger.client_ctx, stranger.session())
        self.pump(server, client, transport)
        routed = server.getHandle()
        while self.clock.seconds() < SIBLING_LOGIN_WAIT - 2 * SIBLING_POLL:
            self.clock.advance(SIBLING_POLL)
        self.assertIsNone(routed.connection)
        for _ in range(4):
            self.clock.advance(SIBLING_POLL)
        self.assertIs(routed.chosen, member_a)
        self.pump(server, client, transport)
        self.assertTrue(server.wrappedProtocol.done)
        self.assertEqual(creator.check(routed).problem, NOT_FROM_ACCOUNT)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_wait_when_nobody_is_logging_in(self) -> None:
        self.logging_in = False
        a, stranger = Control(self.factory, TLS12), Control(self.factory, TLS12)
        member_a = self.groups.join("192.0.2.1", "alice", a.context, a.server, a.info)
        creator = DataConnectionCreator(
            a.context,
            a.info,
            "account",
            member_a,
            self.groups,
            self.clock,
            lambda: self.logging_in,
        )
        server, client, transport = self.connect(creator, stranger.client_ctx, stranger.session())
        self.pump(server, client, transport)
        self.assertIs(server.getHandle().chosen, member_a)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_while_waiting_stops_asking(self) -> None:
        a, b = Control(self.factory, TLS13), Control(self.factory, TLS13)
        member_a = self.groups.join("192.0.2.1", "alice", a.context, a.server, a.info)
        creator = DataConnectionCreator(
            a.context, a.info, "account", member_a, self.groups, self.clock, lambda: True
        )
        server, client, transport = self.connect(creator, b.client_ctx, b.session())
        self.pump(server, client, transport)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        server.connectionLost(Exception("gone"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
