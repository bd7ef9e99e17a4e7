"""Client sides of the pumped-transfer scenarios, shared by the direct tests
(tests/e2e/test_tls_pump.py) and the through-an-edge ones (tests/edge/test_edge_pump.py).
Each takes a logged-in ftplib FTPS client (PROT P) and returns what the client saw."""

from __future__ import annotations

import ftplib
import io
import socket
import time
from pathlib import Path
from typing import Any

BIG_SPARSE = 512 * 1024 * 1024  # far more than the buffers on the way hold


def prepare_abor(home: Path) -> None:
    """big.bin (sparse) to abort, small.txt to read afterwards."""
    with open(home / "big.bin", "wb") as handle:
        handle.truncate(BIG_SPARSE)
    (home / "small.txt").write_bytes(b"after ABOR")


def abor_during_download(ftp: ftplib.FTP_TLS) -> list[Any]:
    """RETR big.bin, ABOR 4 MiB in, then RETR small.txt and NOOP: [the two ABOR reply
    codes joined, small.txt's bytes, NOOP's code]; expected ["426226", b"after ABOR",
    "200"]."""
    connection = ftp.transfercmd("RETR big.bin")
    received = 0
    while received < 4 * 1024 * 1024:  # well into the pumped part
        received += len(connection.recv(65536))
    ftp.putcmd("ABOR")
    first, second = ftp.getline(), ftp.getline()
    connection.close()
    small = bytearray()
    ftp.retrbinary("RETR small.txt", small.extend)
    noop = ftp.sendcmd("NOOP")
    ftp.quit()
    return [first[:3] + second[:3], bytes(small), noop[:3]]


def abor_during_upload(ftp: ftplib.FTP_TLS) -> list[Any]:
    """STOR keep.bin: 4 MB in two parts (the receiving thread takes over in between), then
    ABOR with the data connection still open, then STOR after.txt and NOOP: [the ABOR
    reply codes joined, the second STOR's reply, NOOP's code]; expected
    ["426226", "226 Transfer complete", "200"]."""
    conn = ftp.transfercmd("STOR keep.bin")
    conn.sendall(b"x" * 1_000_000)
    time.sleep(0.3)  # the server (or the edge) hands the socket to its thread meanwhile
    conn.sendall(b"x" * 3_000_000)
    ftp.putcmd("ABOR")
    first, second = ftp.getline(), ftp.getline()
    conn.close()
    after = ftp.storbinary("STOR after.txt", io.BytesIO(b"after ABOR"))
    noop = ftp.sendcmd("NOOP")
    ftp.quit()
    return [first[:3] + second[:3], after, noop[:3]]


def stalled_download(ftp: ftplib.FTP_TLS) -> list[str]:
    """RETR big.bin, read 64 KiB, then nothing for 3 s (the server's data_timeout, 1 s,
    sees no byte move), then NOOP: [the transfer's final reply, NOOP's reply]; expected
    a 426 that says "timed out", then 200."""
    connection = ftp.transfercmd("RETR big.bin")
    connection.recv(65536)
    time.sleep(3)
    try:
        reply = ftp.voidresp()
    except ftplib.Error as error:
        reply = str(error)
    connection.close()
    noop = ftp.sendcmd("NOOP")
    ftp.quit()
    return [reply, noop]


def truncated_upload(ftp: ftplib.FTP_TLS) -> list[str]:
    """STOR keep.bin of 4 MB ended by a FIN without close_notify, then a clean STOR of
    clean.bin (3 MB of b"y"): [the first reply, the second]."""
    conn = ftp.transfercmd("STOR keep.bin")
    conn.sendall(b"x" * 1_000_000)
    time.sleep(0.5)  # the server (or the edge) hands the socket to its thread meanwhile
    conn.sendall(b"x" * 3_000_000)
    socket.socket.shutdown(conn, socket.SHUT_WR)  # FIN without close_notify
    try:
        reply = ftp.voidresp()
    except ftplib.Error as error:
        reply = str(error)
    conn.close()
    clean = ftp.storbinary("STOR clean.bin", io.BytesIO(b"y" * 3_000_000))
    ftp.quit()
    return [reply, clean]
