"""AEAD packet protection for SSH, which conch lacks (sans-IO: bytes in, bytes out).

- `aes128-gcm@openssh.com`, `aes256-gcm@openssh.com` (RFC 5647 as OpenSSH does it):
  the 4-byte packet length is clear and authenticated as associated data; the rest is
  AES-GCM with a 12-byte nonce (4 fixed bytes, then a 64-bit invocation counter that
  grows by one per packet, both from the key exchange's IV); a 16-byte tag follows.
- `chacha20-poly1305@openssh.com` (OpenSSH's PROTOCOL.chacha20poly1305): 64 bytes of key,
  the last 32 encrypt the length, the first 32 the rest; the nonce is the packet
  sequence number; Poly1305 over the encrypted length and payload, keyed by the first
  32 bytes of the main key stream (block 0); the payload starts at block 1.

`EncryptThenMAC` is not AEAD but is framed the same way (the length clear, then the
encrypted rest, then the MAC): AES-CTR with `hmac-sha2-256/512-etm@openssh.com`.

Padding: the padding length byte, the payload and 4 or more random bytes make a
multiple of the block size (16 for GCM, 8 for ChaCha20), the length not counted.
Any packet that fails to authenticate raises `PacketError`; so does a length that is
not a multiple of the block size or is larger than `MAX_PACKET`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

MAX_PACKET: Final = 1024 * 1024  # what conch accepts too
TAG: Final = 16

GCM_KEYS: Final = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}
CHACHA: Final = b"chacha20-poly1305@openssh.com"
AEAD_CIPHERS: Final = frozenset({*GCM_KEYS, CHACHA})


class PacketError(Exception):
    """A packet that cannot be accepted (bad length, failed authentication)."""


class PacketProtection(Protocol):
    """One direction of an AEAD cipher."""

    def seal(self, payload: bytes, sequence: int) -> bytes: ...

    def open(self, buffer: bytes | memoryview, sequence: int) -> tuple[bytes, int] | None: ...


def _padding(payload_length: int, block: int) -> int:
    padding = block - ((1 + payload_length) % block)
    return padding + block if padding < 4 else padding


class GCM:
    """AES-GCM packet protection (one direction)."""

    block = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal(self, payload: bytes, sequence: int) -> bytes:
        padding = _padding(len(payload), self.block)
        header = struct.pack("!L", 1 + len(payload) + padding)
        body = bytes((padding,)) + payload + os.urandom(padding)
        return header + self._aead.encrypt(self._nonce(), body, header)

    def open(self, buffer: bytes | memoryview, sequence: int) -> tuple[bytes, int] | None:
        """(payload, bytes used) when `buffer` holds a whole packet, else None."""
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack("!L", buffer[:4])
        if length > MAX_PACKET or length % self.block or length < self.block:
            raise PacketError(f"bad packet length {length}")
        end = 4 + length + TAG
        if len(buffer) < end:
            return None
        view = memoryview(buffer)
        try:
            body = self._aead.decrypt(self._nonce(), view[4:end], view[:4])
        except InvalidTag:
            raise PacketError("packet authentication failed") from None
        return _unpad(body), end


class ChaCha20Poly1305:
    """chacha20-poly1305@openssh.com packet protection (one direction)."""

    block = 8

    def __init__(self, key: bytes) -> None:
        if len(key) < 64:
            raise ValueError("chacha20-poly1305@openssh.com needs 64 bytes of key")
        self._main = key[:32]
        self._header = key[32:64]

    @staticmethod
    def _stream(key: bytes, sequence: int, counter: int, data: bytes | memoryview) -> bytes:
        nonce = counter.to_bytes(8, "little") + (sequence & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        return Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(data)

    def _main_stream(self, sequence: int, data: bytes | memoryview) -> tuple[bytes, bytes]:
        """(Poly1305 key, `data` en/decrypted): key stream block 0, then blocks 1...,
        from one cipher context."""
        nonce = bytes(8) + (sequence & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        context = Cipher(algorithms.ChaCha20(self._main, nonce), mode=None).encryptor()
        return context.update(bytes(64))[:32], context.update(data)

    def seal(self, payload: bytes, sequence: int) -> bytes:
        padding = _padding(len(payload), self.block)
        length = struct.pack("!L", 1 + len(payload) + padding)
        body = bytes((padding,)) + payload + os.urandom(padding)
        poly_key, encrypted_body = self._main_stream(sequence, body)
        encrypted = self._stream(self._header, sequence, 0, length) + encrypted_body
        return encrypted + Poly1305.generate_tag(poly_key, encrypted)

    def open(self, buffer: bytes | memoryview, sequence: int) -> tuple[bytes, int] | None:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack("!L", self._stream(self._header, sequence, 0, buffer[:4]))
        if length > MAX_PACKET or length % self.block or length < self.block:
            raise PacketError(f"bad packet length {length}")
        end = 4 + length + TAG
        if len(buffer) < end:
            return None
        view = memoryview(buffer)
        poly_key, body = self._main_stream(sequence, view[4 : 4 + length])
        expected = Poly1305.generate_tag(poly_key, view[: 4 + length])
        if not hmac.compare_digest(expected, view[4 + length : end]):
            raise PacketError("packet authentication failed")
        return _unpad(body), end


def _unpad(body: bytes) -> bytes:
    padding = body[0]
    if padding < 4 or padding + 1 > len(body):
        raise PacketError("bad padding")
    return body[1 : len(body) - padding]


def protection(name: bytes, key: bytes, iv: bytes) -> PacketProtection | None:
    """The AEAD protection for cipher `name`, or None for a non-AEAD cipher."""
    if name in GCM_KEYS:
        return GCM(key[: GCM_KEYS[name]], iv[:12])
    if name == CHACHA:
        return ChaCha20Poly1305(key[:64])
    return None


ETM_MACS: Final = {
    b"hmac-sha2-512-etm@openssh.com": hashlib.sha512,
    b"hmac-sha2-256-etm@openssh.com": hashlib.sha256,
}


class EncryptThenMAC:
    """A stream cipher (AES-CTR) with an `-etm@openssh.com` MAC (one direction): the
    length is clear, the MAC covers the sequence number, the length and the ciphertext,
    and is checked before anything is decrypted."""

    block = 16

    def __init__(self, cipher: Any, digest: Any, key: bytes) -> None:
        self._cipher = cipher  # a cryptography CipherContext, stateful across packets
        self._digest = digest
        self._key = key[: digest().digest_size]
        self._size = digest().digest_size

    def _mac(self, sequence: int, data: bytes | memoryview) -> bytes:
        mac = hmac.new(self._key, struct.pack("!L", sequence & 0xFFFFFFFF), self._digest)
        mac.update(data)
        return mac.digest()

    def seal(self, payload: bytes, sequence: int) -> bytes:
        padding = _padding(len(payload), self.block)
        header = struct.pack("!L", 1 + len(payload) + padding)
        encrypted = header + self._cipher.update(bytes((padding,)) + payload + os.urandom(padding))
        return encrypted + self._mac(sequence, encrypted)

    def open(self, buffer: bytes | memoryview, sequence: int) -> tuple[bytes, int] | None:
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack("!L", buffer[:4])
        if length > MAX_PACKET or length % self.block or length < self.block:
            raise PacketError(f"bad packet length {length}")
        end = 4 + length + self._size
        if len(buffer) < end:
            return None
        view = memoryview(buffer)
        if not hmac.compare_digest(self._mac(sequence, view[: 4 + length]), view[4 + length : end]):
            raise PacketError("packet authentication failed")
        return _unpad(self._cipher.update(view[4 : 4 + length])), end


def etm(mac_name: bytes, cipher: Any, key: bytes) -> EncryptThenMAC | None:
    """Encrypt-then-MAC protection for `mac_name` over a CTR cipher context, or None."""
    digest = ETM_MACS.get(mac_name)
    return EncryptThenMAC(cipher, digest, key) if digest is not None else None
