"""Everything the access decision knows about a client, in one immutable record.

Filled by the TLS layer today; an edge relay or a PROXY-protocol header could
fill it later. The access policy reads only this record.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from securetransport.tls.verify import CertificateVerdict


def normalize_address(address: str) -> str:
    """Return the textual IP address, mapping IPv4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True)
class ClientFacts:
    """The client as the access decision sees it."""

    address: str  # normalized with normalize_address()
    protected: bool = False  # the control channel runs under TLS
    tls_version: str | None = None
    cipher: str | None = None
    peer_chain: tuple[bytes, ...] = ()  # DER certificates, leaf first; empty: none presented
    # The chain verified once after the handshake, against the trust store, without any
    # account's pins (the decision at USER adds those); None: no chain presented.
    certificate: CertificateVerdict | None = None
