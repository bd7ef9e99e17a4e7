"""Private OpenSSL calls on the memory BIOs behind Twisted's TLS layer.

Twisted drives each `SSL.Connection` through two memory BIOs. These functions look into
them and swap them: onto a socket and back (`ftp/tls_pump.py`: bulk TLS in a thread), and
for fresh ones once a control connection's handshake is over (`renew_idle_bios`: a memory
BIO keeps the capacity of the largest flight it ever held, and the handshake's is the
largest an idle session ever sees). pyOpenSSL has no API for this; every private
attribute and `lib` call of that kind is in this module.
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib


def pending_in_memory_bios(conn: SSL.Connection, *, incoming: bool = True) -> int:
    """Bytes waiting in `conn`'s memory BIOs (0 when it has none): both, or only the
    outgoing one."""
    total = 0
    for bio in (conn._into_ssl, conn._from_ssl) if incoming else (conn._from_ssl,):
        if bio is not None:
            total += int(_lib.BIO_get_mem_data(bio, _ffi.NULL))
    return total


def bind_to_socket(conn: SSL.Connection, fd: int) -> None:
    """Move an established memory-BIO `conn` onto socket `fd` (which it will not close).

    Its memory BIOs must be empty: OpenSSL frees them. pyOpenSSL's references are set to
    None so that a stray `bio_read`/`bio_write` raises instead of touching freed memory.
    """
    if pending_in_memory_bios(conn):
        raise ValueError("memory BIOs not empty")
    if _lib.SSL_set_fd(conn._ssl, fd) != 1:
        _lib.ERR_clear_error()
        raise OSError("SSL_set_fd failed")
    conn._into_ssl = None
    conn._from_ssl = None
    # The session Contexts release idle buffers (small idle sessions); while pumping,
    # that would be a free and a malloc per 16 KiB record.
    _lib.SSL_clear_mode(conn._ssl, _lib.SSL_MODE_RELEASE_BUFFERS)


def unbind_from_socket(conn: SSL.Connection) -> None:
    """Give `conn` fresh, empty memory BIOs again (frees the socket BIO)."""
    _new_memory_bios(conn)
    _lib.SSL_set_mode(conn._ssl, _lib.SSL_MODE_RELEASE_BUFFERS)


def renew_idle_bios(conn: object) -> bool:
    """Swap `conn`'s memory BIOs for fresh ones if both are empty (frees their buffers).

    Returns False, changing nothing, when either holds bytes, or `conn` is not an
    `SSL.Connection` on memory BIOs (a stand-in, or one bound to a socket).
    """
    if (
        not isinstance(conn, SSL.Connection)
        or conn._into_ssl is None
        or conn._from_ssl is None
        or pending_in_memory_bios(conn)
    ):
        return False
    _new_memory_bios(conn)
    return True


def _new_memory_bios(conn: SSL.Connection) -> None:
    into = _lib.BIO_new(_lib.BIO_s_mem())
    out = _lib.BIO_new(_lib.BIO_s_mem())
    if into == _ffi.NULL or out == _ffi.NULL:  # pragma: no cover - out of memory
        raise MemoryError("BIO_new")
    _lib.SSL_set_bio(conn._ssl, into, out)  # frees the BIOs it had
    conn._into_ssl = into
    conn._from_ssl = out
