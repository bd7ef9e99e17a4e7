"""Say in the log what a client sent on the wrong kind of port (implicit vs explicit FTPS)."""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

log = Logger(namespace="securetransport.ftp.sniff")

_COMMAND = re.compile(rb"[A-Za-z]{3,4}( |\r|\n)")


def describe_first_bytes(data: bytes) -> str:
    """`"tls"` for a TLS handshake record, `"ftp"` for an FTP command line, else `"other"`."""
    if len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03:
        return "tls"
    if _COMMAND.match(data[:5]):
        return "ftp"
    return "other"


class _ImplicitPortWatch(ProtocolWrapper):
    _looked = False

    def dataReceived(self, data: bytes) -> None:
        if not self._looked:
            self._looked = True
            kind = describe_first_bytes(data)
            if kind != "tls":
                peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
                port = self.transport.getHost().port  # type: ignore[union-attr,attr-defined]
                if kind == "ftp":
                    what = f"plain FTP command {data[:4]!r}"
                    advice = "connect with TLS, or use AUTH TLS on the explicit port"
                else:
                    what = f"{len(data)} bytes that are not a TLS ClientHello"
                    advice = "this port expects TLS from the first byte"
                log.warn(
                    "{host}: {what} on implicit FTPS port {port}: {advice}",
                    host=peer.host,
                    what=what,
                    port=port,
                    advice=advice,
                )
        super().dataReceived(data)


class ImplicitPortWatch(WrappingFactory):
    """Wraps an implicit port's TLS factory and logs a first packet that is not TLS."""

    protocol = _ImplicitPortWatch

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
