"""SSH key files for trials and tests: ed25519 key pairs in OpenSSH formats (SPEC section 9).

`pki init DIR --user NAME` writes `ssh_host_ed25519_key` (+ `.pub`) and `NAME_ed25519`
(+ `.pub`); private keys are mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HOST_KEY_NAME = "ssh_host_ed25519_key"


def write_ed25519_pair(path: Path, comment: str) -> str:
    """Write an OpenSSH ed25519 private key at `path` (0600) and `path.pub`; return the
    public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode('ascii')} {comment}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    os.chmod(path, 0o600)
    Path(f"{path}.pub").write_text(line + "\n")
    return line


def write_ssh_keys(folder: Path, users: list[str]) -> dict[str, str]:
    """The host key and one key pair per user in `folder`; {file name: public key line}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {HOST_KEY_NAME: write_ed25519_pair(folder / HOST_KEY_NAME, "securetransport-host")}
    for user in users:
        name = f"{user}_ed25519"
        written[name] = write_ed25519_pair(folder / name, user)
    return written
