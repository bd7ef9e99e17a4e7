"""Reactor latency while client certificates are checked against a large CRL (issue #9.9).

Run: .venv/bin/python -m bench.crl_latency [--sessions 50] [--users 19] [--crl-mib 5]

Starts the server (`twistd -n securetransport`, `hardening.server.ServerProcess`) on
127.0.0.1 in a temporary folder, with a CRL of about `--crl-mib` MiB (DER; random
revoked serials, made with cryptography) in `tls.crl` and a class that verifies client
certificates. One client, in its own process, logs in with its certificate and sends
NOOP every `--interval` seconds; it measures the reply time alone first (the baseline),
then while `--sessions` other clients each do AUTH TLS with the same certificate and
send `USER` `--users` times to a name that certificate does not name (so the server
verifies the certificate, CRL included, at the handshake and at every USER, and
replies 331). Prints the NOOP reply times (median, p99, max) of both phases.
`--crl-mib 0.001` gives the same load with a tiny CRL, for comparison.

A figure for the notes, not a timed test.
"""

from __future__ import annotations

import argparse
import datetime
import ftplib
import multiprocessing
import secrets
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hardening.server import ServerProcess
from securetransport.pki import load_certificate

CLASSES = """
[[class]]
name = "certificates"
ssl = "mandatory"
client_certificate = "verify"
login = ["certificate", "password"]
session_reuse = "off"
"""
REVOKED_ENTRY_BYTES = 35  # DER of one entry with a 16-byte serial and a UTCTime


def write_crl(pki: Path, size: int) -> int:
    """A CRL of about `size` bytes (DER) signed by pki/ca.key, as pki/ca.crl (PEM)."""
    ca = load_certificate(pki / "ca.crt")
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    when = now - datetime.timedelta(days=1)
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 | 1)
        .revocation_date(when)
        .build()
        for _ in range(size // REVOKED_ENTRY_BYTES)
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.subject,
        last_update=when,
        next_update=now + datetime.timedelta(days=30),
        revoked_certificates=revoked,
    ).add_extension(x509.CRLNumber(1), critical=False)
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    (pki / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return len(crl.public_bytes(serialization.Encoding.DER))


def client_context(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "alice.crt"), str(pki / "alice.key"))
    return context


def probe(
    port: int, pki: Path, interval: float, ready: Event, stop: Event, out: Connection
) -> None:
    """In its own process (no GIL shared with the load): log in with the certificate,
    then NOOP every `interval` s; sends [(monotonic time sent, reply time)]."""
    ftp = ftplib.FTP_TLS(context=client_context(pki), timeout=900)
    ftp.connect("127.0.0.1", port)
    ftp.login("alice", "")  # 232: the certificate logs in
    samples: list[tuple[float, float]] = []
    ready.set()
    while not stop.is_set():
        started = time.monotonic()
        ftp.voidcmd("NOOP")
        samples.append((started, time.monotonic() - started))
        stop.wait(interval)
    ftp.quit()
    out.send(samples)


def load_session(
    port: int, context: ssl.SSLContext, users: int, start: threading.Barrier, replies: list[str]
) -> None:
    """AUTH TLS with the certificate, then USER `users` times (each verifies it again)."""
    start.wait()
    with socket.create_connection(("127.0.0.1", port), timeout=900) as raw:
        lines = raw.makefile("rb")
        lines.readline()
        raw.sendall(b"AUTH TLS\r\n")
        lines.readline()
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            reader = tls.makefile("rb")
            for _ in range(users):
                tls.sendall(b"USER not-named\r\n")
                replies.append(reader.readline().decode("ascii", "replace")[:3])
            tls.sendall(b"QUIT\r\n")
            reader.readline()


def summary(samples: Sequence[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms ({len(ordered)} NOOPs)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crl_latency", description=__doc__)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--users", type=int, default=19, help="USER commands per session")
    parser.add_argument("--crl-mib", type=float, default=5.0, help="CRL size, DER")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between NOOPs")
    parser.add_argument("--baseline", type=float, default=2.0, help="seconds without load")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="st-crl-bench-"))
    server = ServerProcess(
        root / "server",
        extra_server=f"login_timeout = 3600\nmax_sessions_per_address = {args.sessions + 10}\n"
        f"max_sessions = {args.sessions + 10}\n",
        extra_tls='crl = ["pki/ca.crl"]',
        classes=CLASSES,
        run_as=None,
    )
    try:
        server.prepare()
        crl_bytes = write_crl(server.pki, int(args.crl_mib * 1024 * 1024))
        print(f"CRL: {crl_bytes / 1024 / 1024:.2f} MiB DER", flush=True)
        server.start(timeout=120)
        context = client_context(server.pki)
        ready, stop = multiprocessing.Event(), multiprocessing.Event()
        receiver, sender = multiprocessing.Pipe(duplex=False)
        prober = multiprocessing.Process(
            target=probe,
            args=(server.explicit_port, server.pki, args.interval, ready, stop, sender),
            daemon=True,
        )
        prober.start()
        if not ready.wait(60):
            raise RuntimeError("the NOOP client did not log in")
        time.sleep(args.baseline)

        replies: list[str] = []
        start = threading.Barrier(args.sessions + 1)
        sessions = [
            threading.Thread(
                target=load_session,
                args=(server.explicit_port, context, args.users, start, replies),
                daemon=True,
            )
            for _ in range(args.sessions)
        ]
        for thread in sessions:
            thread.start()
        start.wait()
        began = time.monotonic()
        for thread in sessions:
            thread.join()
        ended = time.monotonic()
        elapsed = ended - began
        stop.set()
        samples: list[tuple[float, float]] = receiver.recv()
        prober.join(timeout=60)
        baseline = [rtt for sent, rtt in samples if sent < began]
        loaded = [rtt for sent, rtt in samples if began <= sent < ended]

        expected = args.sessions * args.users
        print(f"load: {args.sessions} sessions x {args.users} USER in {elapsed:.1f} s")
        print(f"USER replies: {len(replies)}/{expected}, codes {sorted(set(replies))}")
        print(f"NOOP alone:     {summary(baseline)}")
        print(f"NOOP with load: {summary(loaded)}")
        problems = server.log_problems()
        if problems:
            print("server log problems:", *problems[:5], sep="\n  ")
        return 0 if len(replies) == expected and not problems else 1
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
