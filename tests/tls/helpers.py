"""Real TLS between pyOpenSSL Connections over memory BIOs (no sockets), and test PKI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from securetransport import pki
from securetransport.tls.context import ServerCredentials, SessionContextFactory

TLS12 = SSL.TLS1_2_VERSION
TLS13 = SSL.TLS1_3_VERSION
VERSIONS = {"TLSv1.2": TLS12, "TLSv1.3": TLS13}


@dataclass
class PKIFixture:
    ca: x509.Certificate
    ca_key: pki.PrivateKey
    server: x509.Certificate
    server_key: pki.PrivateKey

    def credentials(self, **changes: object) -> ServerCredentials:
        fields: dict[str, object] = {
            "chain": (self.server, self.ca),
            "private_key": self.server_key,
            "client_cas": (self.ca,),
        }
        fields.update(changes)
        return ServerCredentials(**fields)  # type: ignore[arg-type]

    def factory(self, **changes: object) -> SessionContextFactory:
        return SessionContextFactory(self.credentials(**changes))

    def client_certificate(self, cn: str = "alice") -> tuple[x509.Certificate, pki.PrivateKey]:
        return pki.issue_certificate(self.ca, self.ca_key, cn=cn)


def make_pki(server_key: pki.PrivateKey | None = None, path_length: int | None = 0) -> PKIFixture:
    ca, ca_key = pki.make_ca(path_length=path_length)
    server, key = pki.issue_certificate(
        ca, ca_key, cn="localhost", eku=(pki.SERVER_AUTH,), san_dns=("localhost",), key=server_key
    )
    return PKIFixture(ca, ca_key, server, key)


def client_context(
    max_version: int | None = None,
    min_version: int | None = None,
    ciphers: bytes | None = None,
    certificate: x509.Certificate | None = None,
    key: pki.PrivateKey | None = None,
    extra_chain: Sequence[x509.Certificate] = (),
    groups: bytes | None = None,
    options: int = 0,
) -> SSL.Context:
    """A client Context; keep it to resume its sessions (pyOpenSSL requires the same one)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if min_version is not None:
        context.set_min_proto_version(min_version)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    if ciphers is not None:
        context.set_cipher_list(ciphers)
    if groups is not None:
        assert _lib.SSL_CTX_set1_curves_list(context._context, groups) == 1
    if options:
        context.set_options(options)
    if certificate is not None and key is not None:
        context.use_certificate(certificate)
        context.use_privatekey(key)  # type: ignore[arg-type]
        for extra in extra_chain:
            context.add_extra_chain_cert(extra)
    return context


def move(source: SSL.Connection, sink: SSL.Connection) -> bool:
    try:
        data = source.bio_read(1 << 20)
    except SSL.WantReadError:
        return False
    sink.bio_write(data)
    return bool(data)


def _poke(connection: SSL.Connection) -> None:
    try:
        connection.recv(1)
    except SSL.WantReadError:
        pass


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Complete a handshake between two Connections in memory; SSL.Error if it fails.

    Afterwards each side reads once, so a TLS 1.3 client has its NewSessionTickets.
    """
    for _ in range(20):
        finished = 0
        for connection in (client, server):
            try:
                connection.do_handshake()
                finished += 1
            except SSL.WantReadError:
                pass
        moved = move(client, server) | move(server, client)
        if finished == 2 and not moved:
            break
    else:
        raise AssertionError("handshake did not finish")
    for _ in range(2):
        _poke(server)
        move(server, client)
        _poke(client)
        move(client, server)


def connect(
    client_ctx: SSL.Context,
    server_ctx: SSL.Context,
    session: SSL.Session | None = None,
) -> tuple[SSL.Connection, SSL.Connection]:
    """A finished handshake: (client, server). `session` is offered for resumption."""
    client = SSL.Connection(client_ctx)
    client.set_connect_state()
    if session is not None:
        client.set_session(session)
    server = SSL.Connection(server_ctx)
    server.set_accept_state()
    handshake(client, server)
    return client, server


def exchange(client: SSL.Connection, server: SSL.Connection, payload: bytes) -> bytes:
    """Send `payload` from client to server over the TLS connection; return what arrived."""
    client.sendall(payload)
    move(client, server)
    return server.recv(len(payload) + 1)


def close(client: SSL.Connection, server: SSL.Connection) -> None:
    """A clean TLS close: close_notify both ways."""
    client.shutdown()
    move(client, server)
    try:
        server.recv(1)
    except SSL.ZeroReturnError:
        pass
    server.shutdown()
    move(server, client)
    try:
        client.recv(1)
    except SSL.ZeroReturnError:
        pass
