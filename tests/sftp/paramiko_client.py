"""Blocking paramiko helpers (run them in a thread): connect with the host key checked."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import paramiko

from tests.sftp.harness import SFTPServer


def host_key(server: SFTPServer) -> paramiko.PKey:
    line = server.public_keys["ssh_host_ed25519_key"]
    kind, data = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(data))


def connect(server: SFTPServer) -> paramiko.Transport:
    """A started transport whose host key is the server's (else AssertionError)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = 20
    transport.start_client(timeout=20)
    remote = transport.get_remote_server_key()
    if remote.asbytes() != host_key(server).asbytes():
        transport.close()
        raise AssertionError("host key mismatch")
    return transport


def user_key(server: SFTPServer, user: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key_file(str(server.key(user)))


def allowed_methods(server: SFTPServer, user: str) -> list[str]:
    """What the server offers after `none` for `user`."""
    transport = connect(server)
    try:
        transport.auth_none(user)
    except paramiko.BadAuthenticationType as error:
        return list(error.allowed_types)
    finally:
        transport.close()
    raise AssertionError("the none method succeeded")


def sftp_by_key(server: SFTPServer, user: str = "alice") -> tuple[paramiko.Transport, Any]:
    transport = connect(server)
    transport.auth_publickey(user, user_key(server, user))
    return transport, paramiko.SFTPClient.from_transport(transport)


def sftp_by_password(
    server: SFTPServer, user: str, password: str
) -> tuple[paramiko.Transport, Any]:
    transport = connect(server)
    transport.auth_password(user, password)
    return transport, paramiko.SFTPClient.from_transport(transport)


def raw_sftp_channel(server: SFTPServer, user: str = "alice") -> tuple[paramiko.Transport, Any]:
    """A logged-in channel with the sftp subsystem started and INIT/VERSION done."""
    transport = connect(server)
    transport.auth_publickey(user, user_key(server, user))
    channel = transport.open_session()
    channel.invoke_subsystem("sftp")
    channel.sendall(struct.pack("!LBL", 5, 1, 3))
    read_packet(channel)
    return transport, channel


def read_exact(channel: Any, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = channel.recv(count - len(data))
        if not chunk:
            raise EOFError("channel closed")
        data += chunk
    return data


def read_packet(channel: Any) -> tuple[int, bytes]:
    (length,) = struct.unpack("!L", read_exact(channel, 4))
    body = read_exact(channel, length)
    return body[0], body[1:]


def sftp_string(data: bytes) -> bytes:
    return struct.pack("!L", len(data)) + data


def write_path(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
