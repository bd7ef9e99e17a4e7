"""The SSH transport, connection service and factory of the SFTP listener (SPEC section 9).

- Algorithms (our subclass, not conch's defaults): key exchange without SHA-1
  (`mlkem768x25519-sha256`, curve25519, ECDH over NIST curves, DH group exchange with
  SHA-256 when a moduli file is given); AES-CTR only (no CBC, no 3DES); HMAC-SHA2
  only (no SHA-1, no MD5); host key signatures without `ssh-rsa` and DSA; no
  compression. `server-sig-algs` lists the user key algorithms we accept.
- `SFTPServerTransport`: a banned address is closed before the key exchange (nothing
  is sent, not even the version line), the session limits apply as for FTP,
  `login_timeout` runs from the connection to the end of authentication.
- `SFTPConnection`: channels that reopen their windows themselves (`manual_window`)
  get no automatic window adjustment.
- `SFTPFactory`: host keys from OpenSSH private key files (`load_host_keys`).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any, Final

from twisted.conch.ssh import common, connection, factory, keys, transport
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from securetransport.client import normalize_address
from securetransport.sftp import aead
from securetransport.sftp.auth import USER_SIGNATURE_ALGORITHMS, SFTPUserAuthServer, SSHSessionInfo

log = Logger(namespace="securetransport.sftp.server")

KEY_EXCHANGES: Final[tuple[bytes, ...]] = (
    b"mlkem768x25519-sha256",
    b"curve25519-sha256",
    b"curve25519-sha256@libssh.org",
    b"diffie-hellman-group-exchange-sha256",
)
CIPHERS: Final[tuple[bytes, ...]] = (
    b"chacha20-poly1305@openssh.com",
    b"aes256-gcm@openssh.com",
    b"aes128-gcm@openssh.com",
    b"aes256-ctr",
    b"aes192-ctr",
    b"aes128-ctr",
)
STRICT_KEX_SERVER: Final = b"kex-strict-s-v00@openssh.com"
STRICT_KEX_CLIENT: Final = b"kex-strict-c-v00@openssh.com"
# Messages allowed during the initial key exchange under strict kex: KEXINIT, NEWKEYS
# and the key exchange method's own (30-49).
_KEX_MESSAGES: Final = frozenset({20, 21, *range(30, 50)})
MSG_CHANNEL_DATA: Final = 94
MACS: Final[tuple[bytes, ...]] = (
    b"hmac-sha2-256-etm@openssh.com",
    b"hmac-sha2-512-etm@openssh.com",
    b"hmac-sha2-512",
    b"hmac-sha2-256",
)
REFUSED_HOST_SIGNATURES: Final = frozenset({b"ssh-rsa", b"ssh-dss"})
VERSION: Final = b"SSH-2.0-securetransport"
MAX_CHANNELS: Final = 8  # open channels per connection


class HostKeyError(Exception):
    """A host key file that cannot be used; the message names the file and why."""


def load_host_keys(paths: tuple[Path, ...] | list[Path]) -> dict[bytes, keys.Key]:
    """Private host keys by SSH key type, from OpenSSH private key files.

    HostKeyError for a missing, unreadable, encrypted, DSA or public-only key, or a
    key readable by group or others.
    """
    found: dict[bytes, keys.Key] = {}
    for path in paths:
        try:
            info = path.stat()
            data = path.read_bytes()
        except OSError as error:
            raise HostKeyError(f"{path}: {error.strerror}") from None
        if info.st_mode & 0o077:
            raise HostKeyError(f"{path}: readable by others (chmod 600)")
        try:
            key = keys.Key.fromString(data)
        except keys.EncryptedKeyError:
            raise HostKeyError(f"{path}: encrypted host keys are not supported") from None
        except (keys.BadKeyError, ValueError) as error:
            raise HostKeyError(f"{path}: not an OpenSSH private key ({error})") from None
        if key.isPublic():
            raise HostKeyError(f"{path}: a public key; the private key file is needed")
        if key.type() == "DSA":
            raise HostKeyError(f"{path}: DSA host keys are refused")
        found[key.sshType()] = key
    return found


class _Ciphers(transport.SSHCiphers):
    """conch's SSHCiphers plus the AEAD ciphers (`aead`): for those, `out_aead` /
    `in_aead` protect the packets and no MAC is used."""

    cipherMap = {
        **transport.SSHCiphers.cipherMap,
        # Placeholders so conch's own set-up runs; the packets go through `aead`.
        **{name: transport.SSHCiphers.cipherMap[b"aes256-ctr"] for name in aead.AEAD_CIPHERS},
    }
    macMap = {**transport.SSHCiphers.macMap, **aead.ETM_MACS}  # noqa: N815
    out_aead: aead.PacketProtection | None = None
    in_aead: aead.PacketProtection | None = None

    def setKeys(  # noqa: N802
        self,
        outIV: bytes,  # noqa: N803
        outKey: bytes,  # noqa: N803
        inIV: bytes,  # noqa: N803
        inKey: bytes,  # noqa: N803
        outInteg: bytes,  # noqa: N803
        inInteg: bytes,  # noqa: N803
    ) -> None:
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self.out_aead = aead.protection(self.outCipType, outKey, outIV) or aead.etm(
            self.outMACType, self.encryptor, outInteg
        )
        self.in_aead = aead.protection(self.inCipType, inKey, inIV) or aead.etm(
            self.inMACType, self.decryptor, inInteg
        )
        if self.out_aead is not None:
            self.outMAC = (None, b"", b"", 0)
        if self.in_aead is not None:
            self.inMAC = (None, b"", b"", 0)
            self.verifyDigestSize = 0


class SFTPServerTransport(transport.SSHServerTransport):
    """conch's server transport with our algorithms, bans, limits and login timer,
    AEAD ciphers and strict key exchange (the Terrapin countermeasure): when the
    client's first KEXINIT lists `kex-strict-c-v00@openssh.com`, that KEXINIT must be
    its first packet, only key exchange messages are accepted until the first
    NEWKEYS, and each NEWKEYS resets the packet sequence number of its direction."""

    ourVersionString = VERSION
    supportedKeyExchanges = list(KEY_EXCHANGES)
    supportedCiphers = list(CIPHERS)
    supportedMACs = list(MACS)
    supportedCompressions = [b"none"]

    runtime: Any
    session: SSHSessionInfo
    closing = False
    strict_kex = False
    _initial_kex_done = False
    _counted = False
    _login_timer: IDelayedCall | None = None
    _idle_timer: IDelayedCall | None = None
    _last_activity = 0.0

    def connectionMade(self) -> None:  # noqa: N802
        runtime = self.factory.runtime  # type: ignore[attr-defined]
        self.runtime = runtime
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        address = normalize_address(peer.host)
        session_id = f"{address}:{peer.port}-{int(time.time() * 1000) % 10**9}"
        self.session = SSHSessionInfo(address, session_id, transport=self)
        now = runtime.reactor.seconds()
        if runtime.guard.is_banned(address, now):
            log.info("refused {peer}: banned", peer=address)
            self.closing = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if not runtime.sessions.try_open(address):
            log.info("refused {peer}: too many sessions", peer=address)
            self.closing = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._counted = True
        runtime.open_sessions.add(self.session)
        self._login_timer = runtime.reactor.callLater(
            runtime.config.server.login_timeout, self._login_timed_out
        )
        runtime.audit.event(
            "session-start",
            session=session_id,
            client=address,
            port=self.transport.getHost().port,  # type: ignore[union-attr]
            protocol="sftp",
        )
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.closing:
            return
        self._last_activity = self.runtime.reactor.seconds()
        if not self.gotVersion or getattr(self.currentEncryptions, "in_aead", None) is None:
            super().dataReceived(data)
            return
        self.buf = self.buf + data
        self._read_aead_packets()

    def _read_aead_packets(self) -> None:
        """conch's packet loop for AEAD ciphers, lighter: packets are opened from a view
        of the buffer (compacted once per read), and channel data goes straight to the
        channel."""
        view = memoryview(self.buf)
        at = 0
        while not self.closing:
            protect = getattr(self.currentEncryptions, "in_aead", None)
            if protect is None:  # a rekey chose a non-AEAD cipher: conch's way
                self.buf = bytes(view[at:])
                super().dataReceived(b"")
                return
            try:
                opened = protect.open(view[at:], self.incomingPacketSequence)
            except aead.PacketError as error:
                self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, str(error).encode())
                return
            if opened is None:
                break
            payload, used = opened
            at += used
            self.incomingPacketSequence = (self.incomingPacketSequence + 1) & 0xFFFFFFFF
            if not payload:
                continue
            kind = payload[0]
            service = self.service
            if kind == MSG_CHANNEL_DATA and isinstance(service, SFTPConnection):
                service.channel_data(memoryview(payload)[1:])
            else:
                self.dispatchMessage(kind, payload[1:])
        if at:
            self.buf = bytes(view[at:])

    def sendKexInit(self) -> None:  # noqa: N802
        kexes = [k for k in self.supportedKeyExchanges if k != STRICT_KEX_SERVER]
        if self.sessionID is None:
            kexes.append(STRICT_KEX_SERVER)  # only in the first KEXINIT
        self.supportedKeyExchanges = kexes
        super().sendKexInit()

    def ssh_KEXINIT(self, packet: bytes) -> None:  # noqa: N802
        first = self.sessionID is None
        if first:
            try:
                client_kexes = common.getNS(packet[16:])[0].split(b",")
            except Exception:  # noqa: BLE001 - malformed
                client_kexes = []
            if STRICT_KEX_CLIENT in client_kexes:
                if self.incomingPacketSequence != 1:
                    self.sendDisconnect(
                        transport.DISCONNECT_PROTOCOL_ERROR,
                        b"strict kex: KEXINIT was not the first packet",
                    )
                    return
                self.strict_kex = True
        super().ssh_KEXINIT(packet)
        chosen = getattr(self, "nextEncryptions", None)
        if chosen is not None and not isinstance(chosen, _Ciphers) and not self.closing:
            self.nextEncryptions = _Ciphers(
                chosen.outCipType, chosen.inCipType, chosen.outMACType, chosen.inMACType
            )

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:  # noqa: N802, N803
        if self.strict_kex and not self._initial_kex_done and messageNum not in _KEX_MESSAGES:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                b"strict kex: unexpected message during the key exchange",
            )
            return
        super().dispatchMessage(messageNum, payload)

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:  # noqa: N802, N803
        super()._keySetup(sharedSecret, exchangeHash)  # sends NEWKEYS
        if self.strict_kex:
            self.outgoingPacketSequence = 0

    def ssh_NEWKEYS(self, packet: bytes) -> None:  # noqa: N802
        super().ssh_NEWKEYS(packet)
        if self.strict_kex:
            self.incomingPacketSequence = 0
        self._initial_kex_done = True

    def sendPacket(self, messageType: int, payload: bytes) -> None:  # noqa: N802, N803
        protect = getattr(self.currentEncryptions, "out_aead", None)
        if protect is None:
            super().sendPacket(messageType, payload)
            return
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            if not self._allowedKeyExchangeMessageType(messageType):
                self._blockedByKeyExchange.append((messageType, payload))
                return
        packet = protect.seal(bytes((messageType,)) + payload, self.outgoingPacketSequence)
        self.transport.write(packet)  # type: ignore[union-attr]
        self.outgoingPacketSequence = (self.outgoingPacketSequence + 1) & 0xFFFFFFFF

    def getPacket(self) -> bytes | None:  # noqa: N802
        protect = getattr(self.currentEncryptions, "in_aead", None)
        if protect is None:
            return super().getPacket()  # type: ignore[no-any-return]
        try:
            opened = protect.open(self.buf, self.incomingPacketSequence)
        except aead.PacketError as error:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, str(error).encode())
            return None
        if opened is None:
            return None
        payload, used = opened
        self.buf = self.buf[used:]
        self.incomingPacketSequence = (self.incomingPacketSequence + 1) & 0xFFFFFFFF
        return payload

    def _login_timed_out(self) -> None:
        self._login_timer = None
        log.info("{peer}: login timed out", peer=self.session.address)
        self.runtime.audit.event("login-timeout", session=self.session.session_id)
        self.sendDisconnect(transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"login timed out")

    def login_succeeded(self) -> None:
        """Authentication is over: the login timer stops, the idle timer starts."""
        self._stop_login_timer()
        if not self.closing and self._idle_timer is None:
            self._idle_timer = self.runtime.reactor.callLater(
                self.runtime.config.server.idle_timeout, self._check_idle
            )

    def _stop_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _check_idle(self) -> None:
        """`idle_timeout` seconds without a byte from the client end a logged-in session
        (a transfer in either direction keeps the client sending)."""
        reactor = self.runtime.reactor
        idle = self.runtime.config.server.idle_timeout
        quiet = reactor.seconds() - self._last_activity
        if quiet < idle:
            self._idle_timer = reactor.callLater(idle - quiet, self._check_idle)
            return
        self._idle_timer = None
        log.info(
            "{peer}: idle for {seconds:.0f} s; disconnecting",
            peer=self.session.address,
            seconds=quiet,
        )
        self.runtime.audit.event("idle-timeout", session=self.session.session_id, protocol="sftp")
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"idle timeout")

    def end(self, why: str) -> None:
        """Disconnect from the server side (shutdown, account disabled)."""
        if self.closing:
            return
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, why.encode("utf-8"))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:  # noqa: N802
        if self.closing:
            return
        self.closing = True
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:  # noqa: N802, N803
        """The client's DISCONNECT: an ordinary end is not an error (conch logs one)."""
        level = log.info if reasonCode == transport.DISCONNECT_BY_APPLICATION else log.warn
        level(
            "{peer}: client disconnected ({code}: {text})",
            peer=self.session.address,
            code=reasonCode,
            text=description[:200].decode("utf-8", "replace"),
        )

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:  # noqa: N802
        """server-sig-algs: the user key signatures we accept, not our host key's."""
        fixed = [
            (name, b",".join(USER_SIGNATURE_ALGORITHMS) if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.closing = True
        self._stop_login_timer()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        if getattr(self, "runtime", None) is None:
            return
        if self.service is not None or hasattr(self, "avatar"):
            super().connectionLost(reason)
        if self._counted:
            self._counted = False
            self.runtime.sessions.close(self.session.address)
            self.runtime.open_sessions.discard(self.session)
            self.runtime.audit.event(
                "session-end", session=self.session.session_id, user=self.session.username
            )


class SFTPConnection(connection.SSHConnection):
    """ssh-connection: windows of `manual_window` channels are reopened by the channel."""

    def channel_data(self, packet: memoryview) -> None:
        """MSG_CHANNEL_DATA from the transport's AEAD fast path."""
        self.ssh_CHANNEL_DATA(packet)  # type: ignore[arg-type]

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:  # noqa: N802
        local_channel, data_length = struct.unpack_from(">2L", packet)
        channel = self.channels.get(local_channel)
        if channel is None or not getattr(channel, "manual_window", False):
            super().ssh_CHANNEL_DATA(packet)
            return
        if data_length > channel.localWindowLeft or data_length > channel.localMaxPacket:
            log.warn("SFTP channel: more data than the window allows; closing it")
            self.sendClose(channel)
            return
        data = memoryview(packet)[8 : 8 + data_length]  # no copy: the channel copies once
        if len(data) != data_length:
            self.sendClose(channel)
            return
        channel.localWindowLeft -= data_length
        channel.dataReceived(data)

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:  # noqa: N802
        """Only `session` channels, at most MAX_CHANNELS at once; others are refused
        (administratively prohibited) without a traceback in the log."""
        channel_type, rest = common.getNS(packet)
        if channel_type == b"session" and len(self.channels) < MAX_CHANNELS:
            super().ssh_CHANNEL_OPEN(packet)
            return
        (sender,) = struct.unpack(">L", rest[:4])
        log.info("refused a {kind!r} channel", kind=channel_type[:64])
        self.transport.sendPacket(  # type: ignore[union-attr]
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            + common.NS(b"refused")
            + common.NS(b""),
        )

    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:  # noqa: N802
        """No global requests are served (tcpip-forward, keepalive@openssh.com ...)."""
        request_type, rest = common.getNS(packet)
        want_reply = rest[:1] == b"\x01"
        if want_reply:
            self.transport.sendPacket(connection.MSG_REQUEST_FAILURE, b"")  # type: ignore[union-attr]


class SFTPFactory(factory.SSHFactory):
    """The SSH factory of one `protocol = "sftp"` listener."""

    protocol = SFTPServerTransport
    noisy = False
    services = {
        b"ssh-userauth": SFTPUserAuthServer,
        b"ssh-connection": SFTPConnection,
    }

    def __init__(self, runtime: Any, host_keys: dict[bytes, keys.Key]) -> None:
        self.runtime = runtime
        self.privateKeys = dict(host_keys)
        self.publicKeys = {kind: key.public() for kind, key in host_keys.items()}
        self.primes = None

    @property
    def portal(self) -> Any:
        """The shared portal (conch's userauth reads it here)."""
        return self.runtime.portal

    def buildProtocol(self, addr: Any) -> SFTPServerTransport:  # noqa: N802
        built = super().buildProtocol(addr)
        built.supportedPublicKeys = [
            name for name in built.supportedPublicKeys if name not in REFUSED_HOST_SIGNATURES
        ]
        return built  # type: ignore[return-value]
