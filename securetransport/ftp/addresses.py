"""Data-connection addresses: PORT/PASV (RFC 959), EPRT/EPSV (RFC 2428), the bounce rule.

Pure functions on strings. Bad client input raises (or returns) `AddressError`,
which carries the reply code and text to send.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from securetransport.client import normalize_address

PORT_REFUSED = 504  # PORT to another address or to a port below 1024
EPRT_REFUSED = 501  # EPRT to another address or to a port below 1024
LOWEST_ACTIVE_PORT = 1024

PROTOCOL_NOT_SUPPORTED = "Network protocol not supported, use (1,2)"
_IPV4 = 1
_IPV6 = 2

_BYTE = re.compile(r"[0-9]{1,3}", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,5}", re.ASCII)


class AddressError(ValueError):
    """A data-connection address that cannot be used; `code` and `text` are the reply."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def network_protocol(host: str) -> int:
    """RFC 2428 network protocol number of an address: 1 for IPv4 (mapped too), 2 for IPv6."""
    ip = ipaddress.ip_address(normalize_address(host))
    return _IPV4 if ip.version == 4 else _IPV6


def parse_port(argument: str) -> tuple[str, int]:
    """Parse a PORT argument "h1,h2,h3,h4,p1,p2" into ("h1.h2.h3.h4", port)."""
    fields = argument.strip().split(",")
    if len(fields) != 6 or not all(_BYTE.fullmatch(field) for field in fields):
        raise AddressError(501, "Syntax error in PORT argument, use h1,h2,h3,h4,p1,p2")
    numbers = [int(field) for field in fields]
    if any(number > 255 for number in numbers):
        raise AddressError(501, "Syntax error in PORT argument: a field is over 255")
    port = numbers[4] * 256 + numbers[5]
    if port == 0:
        raise AddressError(501, "Syntax error in PORT argument: port 0")
    return ".".join(str(number) for number in numbers[:4]), port


def _parse_port_number(text: str, command: str) -> int:
    if not _NUMBER.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise AddressError(501, f"Syntax error in {command} argument: bad port number")
    return int(text)


def _parse_protocol(text: str, command: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise AddressError(501, f"Syntax error in {command} argument: bad network protocol")
    protocol = int(text)
    if protocol not in (_IPV4, _IPV6):
        raise AddressError(522, PROTOCOL_NOT_SUPPORTED)
    return protocol


def parse_eprt(argument: str) -> tuple[str, int]:
    """Parse an EPRT argument "<d>proto<d>address<d>port<d>" (RFC 2428) into (host, port).

    The delimiter is any ASCII character from 33 to 126. Bad syntax, an address
    that does not match the protocol, or a scoped IPv6 address: 501. A protocol
    other than 1 (IPv4) or 2 (IPv6): 522.
    """
    text = argument.strip()
    syntax = AddressError(501, "Syntax error in EPRT argument, use |proto|address|port|")
    if not text or not 33 <= ord(text[0]) <= 126:
        raise syntax
    parts = text.split(text[0])
    if len(parts) != 5 or parts[0] or parts[4]:
        raise syntax
    protocol = _parse_protocol(parts[1], "EPRT")
    address = parts[2]
    try:
        ip = ipaddress.IPv4Address(address) if protocol == _IPV4 else ipaddress.IPv6Address(address)
    except ValueError:
        raise AddressError(
            501, "Syntax error in EPRT argument: bad address for the network protocol"
        ) from None
    if "%" in address:
        raise AddressError(501, "Syntax error in EPRT argument: scoped address")
    return str(ip), _parse_port_number(parts[3], "EPRT")


def parse_epsv_argument(argument: str | None) -> Literal["ALL"] | int | None:
    """Parse the EPSV argument: None (no argument), "ALL", or the protocol number 1 or 2.

    Another number: 522; anything else: 501.
    """
    if argument is None or not argument.strip():
        return None
    text = argument.strip()
    if text.upper() == "ALL":
        return "ALL"
    return _parse_protocol(text, "EPSV")


def format_pasv_reply(host: str, port: int) -> str:
    """Text of the 227 reply: "Entering Passive Mode (h1,h2,h3,h4,p1,p2)."

    An IPv4-mapped IPv6 host is written as IPv4. An IPv6 host (PASV cannot carry
    one) or an address that is no IP raises AddressError(425).
    """
    try:
        ip = ipaddress.ip_address(normalize_address(host))
    except ValueError:
        raise AddressError(425, "Cannot announce that passive address") from None
    if ip.version != 4:
        raise AddressError(425, "PASV is for IPv4 only, use EPSV")
    if not 1 <= port <= 65535:
        raise AddressError(425, "Cannot announce that passive port")
    fields = [*str(ip).split("."), str(port >> 8), str(port & 0xFF)]
    return f"Entering Passive Mode ({','.join(fields)})."


def format_epsv_reply(port: int) -> str:
    """Text of the 229 reply: "Entering Extended Passive Mode (|||port|)"."""
    if not 1 <= port <= 65535:
        raise AddressError(425, "Cannot announce that passive port")
    return f"Entering Extended Passive Mode (|||{port}|)"


def check_active_target(
    target_host: str, target_port: int, peer_host: str, command: str = "PORT"
) -> AddressError | None:
    """Apply the FTP bounce rule to a PORT/EPRT target; None when it may be used.

    The target must be the control connection's peer address (IPv4-mapped IPv6
    compared as IPv4) and its port at least 1024. A refused target gets
    `PORT_REFUSED` (504) for PORT and `EPRT_REFUSED` (501) for EPRT.
    """
    code = EPRT_REFUSED if command.upper() == "EPRT" else PORT_REFUSED
    try:
        same_host = normalize_address(target_host) == normalize_address(peer_host)
    except ValueError:
        same_host = False
    if not same_host:
        return AddressError(code, "Data connections only to your own address")
    if not LOWEST_ACTIVE_PORT <= target_port <= 65535:
        return AddressError(code, f"Data connections only to ports {LOWEST_ACTIVE_PORT}-65535")
    return None
