"""Session reuse by account: a data connection may resume a sibling control connection's
session (same client address, same account, class `session_reuse = "account"`).

Why: Go's TLS client (rclone, jlaffaye/ftp) keeps one session cache for all its
connections to a server, so a data connection opened for control connection A often
offers the ticket that control connection B got. Every control connection keeps its own
Context (session caches and ticket keys stay per Context: nothing is shared with anyone
else); what changes is which Context serves a data connection.

1. At login into an "account" class a control connection joins the group of its
   (address, account): its Context, its control handshake, the name of its Context's
   ticket key (`context.ticket_key_name`) and its TLS 1.2 session ID. Logging out, REIN
   and the end of the connection take it out again, at once.
2. The server Connection of a data connection is made only once its ClientHello has
   arrived (`RoutedConnection`). The key name that starts an offered ticket (TLS 1.2
   session ticket or TLS 1.3 PSK identity, OpenSSL's format) or the offered TLS 1.2
   session ID picks the group member whose Context can resume it (`choose_member`);
   anything else goes to the session's own Context, which cannot resume it. While an
   offered ticket is unknown and a TLS control connection from the same address has not
   logged in yet, the handshake waits for that login (at most `SIBLING_LOGIN_WAIT`):
   rclone's data connections offer the newest ticket, often one of a connection that is
   still logging in.
3. After the handshake the usual lineage check (`reuse.check_data_session`) runs against
   the chosen member's control handshake, and the member must still be in the group.

A session of another account or address, or of a control connection that is not logged
in, is never routed to, so it is refused with 522 exactly as with "required". With
"required" the same ClientHello reading only tells the client, in the 522 text, that it
offered a session of another connection (rclone) rather than none (stock ftplib).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from securetransport.config import SessionReuse
from securetransport.tls.context import handshake_info, ticket_key_name
from securetransport.tls.facts import HandshakeInfo
from securetransport.tls.reuse import (
    NOT_FROM_ACCOUNT,
    NOT_RESUMED,
    OFFERED_OTHER,
    check_data_session,
    server_session_id,
)

SIBLING_LOGIN_WAIT: Final = 5.0
"""Seconds a data connection's handshake may wait for the control connection whose ticket
it offers to log in (rclone opens several at once and uses whichever ticket is newest)."""
SIBLING_POLL: Final = 0.02
MAX_CLIENT_HELLO: Final = 1 << 16
"""Bytes of handshake records read before giving up on finding a ClientHello in them."""
_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_EXT_SESSION_TICKET: Final = 35
_EXT_PRE_SHARED_KEY: Final = 41
_EXT_SUPPORTED_VERSIONS: Final = 43
_TLS13: Final = b"\x03\x04"
KEY_NAME_LENGTH: Final = 16


# ------------------------------------------------------------------- reading a ClientHello


@dataclass(frozen=True)
class SessionOffer:
    """What a ClientHello offers to resume."""

    session_id: bytes = b""  # legacy_session_id: random in TLS 1.3 (middlebox compatibility)
    tickets: tuple[bytes, ...] = ()  # TLS 1.2 session ticket, TLS 1.3 PSK identities, in order
    offers_tls13: bool = False

    @property
    def key_names(self) -> tuple[bytes, ...]:
        return tuple(t[:KEY_NAME_LENGTH] for t in self.tickets if len(t) > KEY_NAME_LENGTH)

    @property
    def offered(self) -> bool:
        """The client asked to resume a session (a ticket, or a TLS 1.2-only session ID)."""
        return bool(self.tickets) or (bool(self.session_id) and not self.offers_tls13)


NO_OFFER: Final = SessionOffer()


class _Reader:
    """A cursor over bytes; `short` is set (and b"" returned) when a read runs past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.index = 0
        self.short = False

    def take(self, count: int) -> bytes:
        if self.index + count > len(self.data):
            self.short = True
            self.index = len(self.data)
            return b""
        chunk = self.data[self.index : self.index + count]
        self.index += count
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big") if size else 0

    def vector(self, size: int) -> bytes:
        return self.take(self.number(size))

    @property
    def left(self) -> int:
        return len(self.data) - self.index


def read_session_offer(data: bytes) -> SessionOffer | None:
    """The offer of the ClientHello at the start of `data` (TLS records as received).

    None while the ClientHello is incomplete; `NO_OFFER` for anything that is not a
    well-formed ClientHello (OpenSSL then refuses it as it always did). Never raises.
    """
    records = _Reader(data)
    body = bytearray()
    while records.left >= 5:
        kind = records.number(1)
        records.take(2)
        length = records.number(2)
        if kind != _HANDSHAKE or length == 0 or length > (1 << 14) + 2048:
            return NO_OFFER
        if records.left < length:
            break
        body += records.take(length)
        if len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                return NO_OFFER
            size = int.from_bytes(body[1:4], "big")
            if size > MAX_CLIENT_HELLO:
                return NO_OFFER
            if len(body) >= 4 + size:
                return _parse_client_hello(bytes(body[4 : 4 + size]))
    return NO_OFFER if len(data) > MAX_CLIENT_HELLO + 1024 else None


def bytes_wanted(data: bytes | bytearray) -> int:
    """How many bytes `data` must hold before `read_session_offer` can tell more: the end
    of the first incomplete TLS record (a client sending one byte at a time costs one
    parse per record header and one per record, not one per byte)."""
    end = 0
    for _ in range(64):
        if end + 5 > len(data):
            return end + 5
        end += 5 + int.from_bytes(data[end + 3 : end + 5], "big")
        if end > len(data):
            return end
    return len(data) + 1


def _parse_client_hello(message: bytes) -> SessionOffer:
    hello = _Reader(message)
    hello.take(2 + 32)  # legacy_version, random
    session_id = hello.vector(1)
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    extensions = _Reader(hello.vector(2))
    if hello.short:
        return NO_OFFER
    tickets: list[bytes] = []
    offers_tls13 = False
    for _ in range(256):
        if extensions.left < 4:
            break
        kind = extensions.number(2)
        payload = extensions.vector(2)
        if extensions.short:
            return NO_OFFER
        if kind == _EXT_SESSION_TICKET and payload:
            tickets.append(payload)
        elif kind == _EXT_PRE_SHARED_KEY:
            identities = _Reader(_Reader(payload).vector(2))
            for _ in range(64):
                if identities.left < 2:
                    break
                identity = identities.vector(2)
                identities.take(4)  # obfuscated_ticket_age
                if identities.short:
                    return NO_OFFER
                tickets.append(identity)
        elif kind == _EXT_SUPPORTED_VERSIONS:
            versions = _Reader(payload).vector(1)
            offers_tls13 = any(versions[i : i + 2] == _TLS13 for i in range(0, len(versions), 2))
    return SessionOffer(session_id, tuple(tickets), offers_tls13)


# ------------------------------------------------------------------------------- groups


@dataclass(eq=False)
class GroupMember:
    """One logged-in control connection of an "account" class, as its group sees it."""

    address: str
    account: str
    context: SSL.Context = field(repr=False)
    control: HandshakeInfo = field(repr=False)
    key_name: bytes = b""  # of the Context's ticket key; b"" when unknown
    session_id: bytes = b""  # the control connection's TLS 1.2 session ID, if any


class SessionGroups:
    """The logged-in control connections of "account" classes, by (address, account).

    A group is bounded by `max_sessions_per_address`: each member is an open session.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], list[GroupMember]] = {}

    def join(
        self,
        address: str,
        account: str,
        context: SSL.Context,
        control_connection: SSL.Connection,
        control: HandshakeInfo,
    ) -> GroupMember:
        """Add a control connection that has just logged in; returns its membership."""
        member = GroupMember(
            address,
            account,
            context,
            control,
            key_name=ticket_key_name(context),
            session_id=server_session_id(control_connection)
            if control.tls_version == "TLSv1.2"
            else b"",
        )
        self._groups.setdefault((address, account), []).append(member)
        return member

    def leave(self, member: GroupMember) -> None:
        """Take a control connection out (logout, REIN, end): its sessions stop counting."""
        key = (member.address, member.account)
        members = self._groups.get(key, [])
        if member in members:
            members.remove(member)
        if not members:
            self._groups.pop(key, None)

    def members(self, address: str, account: str) -> tuple[GroupMember, ...]:
        return tuple(self._groups.get((address, account), ()))

    def __contains__(self, member: object) -> bool:
        if not isinstance(member, GroupMember):
            return False
        return member in self._groups.get((member.address, member.account), ())

    def __len__(self) -> int:
        return sum(len(members) for members in self._groups.values())


def choose_member(
    offer: SessionOffer, own: GroupMember, members: Sequence[GroupMember]
) -> GroupMember:
    """The member whose Context can resume what `offer` offers; `own` when none can.

    Tickets are tried in the client's order, as OpenSSL does; then a TLS 1.2 session ID.
    """
    candidates = (own, *(member for member in members if member is not own))
    for name in offer.key_names:
        for member in candidates:
            if member.key_name and member.key_name == name:
                return member
    if offer.session_id and not offer.tickets:
        for member in candidates:
            if member.session_id and member.session_id == offer.session_id:
                return member
    return own


def _issued_by(offer: SessionOffer, member: GroupMember) -> bool:
    """Whether `offer` names `member`'s ticket key or session ID."""
    if member.key_name and member.key_name in offer.key_names:
        return True
    return bool(member.session_id) and member.session_id == offer.session_id


# --------------------------------------------------------------------- data connections


class RoutedConnection:
    """Stands in for a data connection's server Connection until its ClientHello is in,
    then becomes an `SSL.Connection` on the Context that `route(offer)` picks.

    Before that, Twisted's TLS layer only writes received bytes, asks for the handshake
    (not yet: WantReadError) and for bytes to send (none); everything else is the real
    Connection's, forwarded. `connection` is None until then.
    """

    def __init__(
        self,
        route: Callable[[SessionOffer, bool], tuple[SSL.Context, Any] | None],
        tls_protocol: Any = None,
        reactor: Any = None,
        wait: float = SIBLING_LOGIN_WAIT,
    ) -> None:
        """`route(offer, final)` picks the Context, or returns None to be asked again
        later (never when `final`); `tls_protocol` is driven on when that happens."""
        self.connection: SSL.Connection | None = None
        self.offer: SessionOffer | None = None
        self.chosen: Any = None  # what `route` returned beside the Context
        self._route = route
        self._protocol = tls_protocol
        self._reactor = reactor
        self._wait = wait if reactor is not None and tls_protocol is not None else 0.0
        self._received = bytearray()
        self._wanted = 5  # bytes before the next attempt to read the ClientHello
        self._app_data: Any = None
        self._timer: Any = None
        self._deadline: float | None = None
        self._ended = False

    def set_accept_state(self) -> None:
        """The real Connection is always a server: nothing to remember."""

    def set_app_data(self, data: Any) -> None:
        self._app_data = data
        if self.connection is not None:
            self.connection.set_app_data(data)

    def get_app_data(self) -> Any:
        return self._app_data

    def bio_write(self, data: bytes) -> int:
        if self.connection is not None:
            return self.connection.bio_write(data) if data else 0
        self._received += data
        if self.offer is not None or len(self._received) < self._wanted:
            return len(data)  # an incomplete record; or waiting for a sibling's login
        offer = read_session_offer(bytes(self._received))
        if offer is None:
            self._wanted = bytes_wanted(self._received)
            return len(data)
        self.offer = offer
        self._decide(final=self._wait <= 0)
        return len(data)

    def _decide(self, final: bool) -> None:
        assert self.offer is not None
        routed = self._route(self.offer, final)
        if routed is None:
            if self._deadline is None:
                self._deadline = self._reactor.seconds() + self._wait
            self._timer = self._reactor.callLater(SIBLING_POLL, self._again)
            return
        context, self.chosen = routed
        connection = SSL.Connection(context, None)
        connection.set_accept_state()
        connection.set_app_data(self._app_data)
        self.connection = connection
        received, self._received = bytes(self._received), bytearray()
        connection.bio_write(received)

    def _again(self) -> None:
        """Ask the route again; once decided, let the TLS layer go on with the handshake."""
        self._timer = None
        if self._ended:
            return
        assert self._deadline is not None
        self._decide(final=self._reactor.seconds() >= self._deadline)
        if self.connection is not None:
            self._protocol.dataReceived(b"")

    def _real(self) -> SSL.Connection:
        if self.connection is None:
            raise SSL.WantReadError()
        return self.connection

    def do_handshake(self) -> None:
        self._real().do_handshake()

    def bio_read(self, bufsiz: int) -> bytes:
        return self._real().bio_read(bufsiz)

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        return self._real().recv(bufsiz, flags)

    def send(self, buf: bytes, flags: int = 0) -> int:
        return self._real().send(buf, flags)

    def bio_shutdown(self) -> None:
        self._ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.connection is not None:
            self.connection.bio_shutdown()

    def shutdown(self) -> bool:
        return self.connection.shutdown() if self.connection is not None else False

    def get_peer_certificate(self) -> Any:
        return self.connection.get_peer_certificate() if self.connection is not None else None

    def __getattr__(self, name: str) -> Any:
        connection = self.__dict__.get("connection")
        if connection is None:
            raise AttributeError(name)
        return getattr(connection, name)


@dataclass(frozen=True)
class DataSessionResult:
    """The outcome of a data connection's handshake for the session that owns it."""

    info: HandshakeInfo
    problem: str | None  # None: accepted; else the text of the 522
    sibling: bool  # resumed (or tried) on another control connection's Context


@implementer(IOpenSSLServerConnectionCreator)
class DataConnectionCreator:
    """Makes and checks the TLS server Connections of one session's data connections.

    `reuse` is the class's `session_reuse`. `member` is the session's group membership
    ("account" classes, after login), `groups` the server's groups; `logging_in()` tells
    whether a TLS control connection from the same address has yet to log in.
    """

    def __init__(
        self,
        context: SSL.Context,
        control: HandshakeInfo,
        reuse: SessionReuse,
        member: GroupMember | None = None,
        groups: SessionGroups | None = None,
        reactor: Any = None,
        logging_in: Callable[[], bool] = lambda: False,
    ) -> None:
        self._context = context
        self._control = control
        self._reuse = reuse
        self._member = member if reuse == "account" else None
        self._groups = groups
        self._reactor = reactor
        self._logging_in = logging_in

    def serverConnectionForTLS(self, tlsProtocol: object) -> Any:  # noqa: N802
        """An `SSL.Connection`, or a `RoutedConnection` that becomes one (duck-typed)."""
        if self._reuse == "off":
            return SSL.Connection(self._context, None)
        if self._member is None:
            return RoutedConnection(self._route)
        return RoutedConnection(self._route, tlsProtocol, self._reactor)

    def _route(
        self, offer: SessionOffer, final: bool
    ) -> tuple[SSL.Context, GroupMember | None] | None:
        if self._member is None or self._groups is None:
            return self._context, None
        members = self._groups.members(self._member.address, self._member.account)
        chosen = choose_member(offer, self._member, members)
        unknown = chosen is self._member and offer.offered and not _issued_by(offer, chosen)
        if unknown and not final and self._logging_in():
            return None  # perhaps a sibling that is still logging in: ask again soon
        return chosen.context, chosen

    def check(self, connection: Any) -> DataSessionResult:
        """Whether the finished handshake of `connection` may carry this session's data."""
        routed = connection if isinstance(connection, RoutedConnection) else None
        real = routed.connection if routed is not None else connection
        assert real is not None, "checked before its handshake"
        info = handshake_info(real)
        if self._reuse == "off":
            return DataSessionResult(info, None, False)
        chosen = routed.chosen if routed is not None else None
        sibling = chosen is not None and chosen is not self._member
        if sibling and (self._groups is None or chosen not in self._groups):
            return DataSessionResult(info, NOT_FROM_ACCOUNT, True)  # it left meanwhile
        control = chosen.control if chosen is not None else self._control
        problem = check_data_session(control, info, info.resumed, True)
        offered = routed is not None and routed.offer is not None and routed.offer.offered
        if problem == NOT_RESUMED and offered:
            problem = NOT_FROM_ACCOUNT if self._reuse == "account" else OFFERED_OTHER
        return DataSessionResult(info, problem, sibling)
