"""`securetransport check`: validate a configuration and the TLS files it names.

Exit 0 and `OK` on stdout, or exit 1 and one line per problem on stderr, each
starting with the key. Warnings (`warning: KEY: ...`) go to stderr and do not
change the exit code.
"""

from __future__ import annotations

import argparse
import datetime
import os
import stat
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from securetransport.cli.common import add_config_option, config_path
from securetransport.config import Config, ConfigError, TLSConfig, load_config
from securetransport.sftp.server import HostKeyError, load_host_keys

MAX_PEM_BYTES = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate the configuration",
        description="Validate the configuration and the TLS files it names.",
    )
    add_config_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `securetransport check`."""
    problems, warnings = check(config_path(args))
    for line in problems:
        print(line, file=sys.stderr)
    for line in warnings:
        print(line, file=sys.stderr)
    if problems:
        return 1
    print("OK")
    config = load_config(config_path(args))
    if config.server.role != "edge":
        from securetransport.edge.settings import settings_digest

        print(f"ssl-access digest {settings_digest(config)}")
    return 0


def check(path: Path, now: datetime.datetime | None = None) -> tuple[list[str], list[str]]:
    """The problems and warnings of the configuration at `path`, as printable lines."""
    try:
        config = load_config(path)
    except ConfigError as error:
        return list(error.problems), list(error.warnings)
    problems, warnings = check_tls_files(config, now)
    problems += check_host_keys(config)
    for index, edge in enumerate(config.edges, 1):
        if config.tls.client_ca is not None and edge.ca == config.tls.client_ca:
            warnings.append(
                f"warning: edge[{index}].ca: is also tls.client_ca; "
                "use a CA for the link and nothing else"
            )
    return problems, list(config.warnings) + warnings


def check_host_keys(config: Config) -> list[str]:
    """`ssh.host_keys[i]: ...` for each SSH host key file the server could not load."""
    problems = []
    for index, path in enumerate(config.ssh.host_keys, 1):
        try:
            load_host_keys([path])
        except HostKeyError as error:
            problems.append(f"ssh.host_keys[{index}]: {error}")
    return problems


def check_tls_files(
    config: Config, now: datetime.datetime | None = None
) -> tuple[list[str], list[str]]:
    """Read and parse the `[tls]` files: problems and warnings, one line each."""
    tls: TLSConfig = config.tls
    problems: list[str] = []
    warnings: list[str] = []
    now = now or datetime.datetime.now(datetime.UTC)
    chain: list[x509.Certificate] = []

    if tls.certificate is not None:
        data = _read(tls.certificate, "tls.certificate", problems)
        if data is not None:
            chain = _certificates(data, tls.certificate, "tls.certificate", problems)
        if chain:
            leaf = chain[0]
            if now > leaf.not_valid_after_utc:
                warnings.append(
                    f"warning: tls.certificate: {tls.certificate} expired on "
                    f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
                )
            elif now < leaf.not_valid_before_utc:
                warnings.append(
                    f"warning: tls.certificate: {tls.certificate} is not valid before "
                    f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
                )
    if tls.private_key is not None:
        data = _read(tls.private_key, "tls.private_key", problems)
        if data is not None:
            _check_key(data, tls.private_key, chain[0] if chain else None, problems)
    if tls.client_ca is not None:
        data = _read(tls.client_ca, "tls.client_ca", problems)
        if data is not None:
            _certificates(data, tls.client_ca, "tls.client_ca", problems)
    for index, crl_path in enumerate(tls.crl, 1):
        key = f"tls.crl[{index}]"
        data = _read(crl_path, key, problems)
        if data is None:
            continue
        try:
            x509.load_pem_x509_crl(data)
        except ValueError:
            problems.append(f"{key}: {crl_path}: not a PEM certificate revocation list")
    return problems, warnings


def _read(path: Path, key: str, problems: list[str]) -> bytes | None:
    """The bytes of a regular file, or None after adding a problem line."""
    try:
        with path.open("rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                problems.append(f"{key}: cannot read {path}: not a regular file")
                return None
            data = stream.read(MAX_PEM_BYTES + 1)
    except OSError as error:
        problems.append(f"{key}: cannot read {path}: {error.strerror or error}")
        return None
    if len(data) > MAX_PEM_BYTES:
        problems.append(f"{key}: {path}: larger than {MAX_PEM_BYTES} bytes")
        return None
    return data


def _certificates(data: bytes, path: Path, key: str, problems: list[str]) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append(f"{key}: {path}: not a valid PEM certificate file")
        return []


def _check_key(data: bytes, path: Path, leaf: x509.Certificate | None, problems: list[str]) -> None:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        problems.append(f"tls.private_key: {path}: encrypted keys are not supported")
        return
    except (ValueError, UnsupportedAlgorithm) as error:
        problems.append(f"tls.private_key: {path}: not a PEM private key ({_first_line(error)})")
        return
    if leaf is None:
        return
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(
        encoding, public
    ):
        problems.append(
            f"tls.private_key: {path} does not match the certificate in tls.certificate"
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
