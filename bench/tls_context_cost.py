"""Cost of one per-session TLS Context (`SessionContextFactory.new_session_context`).

Run: .venv/bin/python bench/tls_context_cost.py [N]
Prints the time per context (median and mean over N), the memory N live contexts take
(RSS growth, which sees OpenSSL's allocations, and tracemalloc, which sees Python's
only), and, for scale, an in-memory full and resumed handshake on such a context.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc

from OpenSSL import SSL

from securetransport import pki
from securetransport.tls.context import (
    ServerCredentials,
    SessionContextFactory,
    _handshake_in_memory,
)


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """The server's own in-memory handshake, then the TLS 1.3 tickets delivered."""
    if not _handshake_in_memory(client, server):
        raise RuntimeError("the in-memory handshake stalled")
    for connection in (client, server):  # deliver TLS 1.3 tickets
        try:
            connection.recv(1)
        except SSL.WantReadError:
            pass
        try:
            (server if connection is client else client).bio_write(connection.bio_read(65536))
        except SSL.WantReadError:
            pass
    try:
        client.recv(1)
    except SSL.WantReadError:
        pass


def measure(factory: SessionContextFactory, n: int, request: bool) -> None:
    for _ in range(50):  # warm up
        factory.new_session_context(request)
    gc.collect()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        factory.new_session_context(request)
        times.append(time.perf_counter() - start)
    gc.collect()
    before = rss_kib()
    tracemalloc.start()
    contexts = [factory.new_session_context(request) for _ in range(n)]
    python_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gc.collect()
    after = rss_kib()
    print(
        f"client certificate requested={request}: "
        f"{statistics.median(times) * 1e3:.3f} ms median, "
        f"{statistics.mean(times) * 1e3:.3f} ms mean; "
        f"{n} live contexts: RSS +{(after - before) / n:.1f} KiB each, "
        f"Python objects {python_bytes / n / 1024:.1f} KiB each"
    )
    del contexts


def measure_handshakes(factory: SessionContextFactory, version: int, n: int = 200) -> None:
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_max_proto_version(version)
    full, resumed = [], []
    for _ in range(n):
        context = factory.new_session_context()
        client = SSL.Connection(client_context)
        client.set_connect_state()
        server = SSL.Connection(context)
        server.set_accept_state()
        start = time.perf_counter()
        handshake(client, server)
        full.append(time.perf_counter() - start)
        again = SSL.Connection(client_context)
        again.set_connect_state()
        session = client.get_session()
        assert session is not None
        again.set_session(session)
        data = SSL.Connection(context)
        data.set_accept_state()
        start = time.perf_counter()
        handshake(again, data)
        resumed.append(time.perf_counter() - start)
    name = "TLSv1.3" if version == SSL.TLS1_3_VERSION else "TLSv1.2"
    print(
        f"{name} in-memory handshake, both ends: full {statistics.median(full) * 1e3:.2f} ms, "
        f"resumed {statistics.median(resumed) * 1e3:.2f} ms (median of {n})"
    )


def make_factory() -> SessionContextFactory:
    ca, ca_key = pki.make_ca()
    server, server_key = pki.issue_certificate(ca, ca_key, cn="localhost", eku=(pki.SERVER_AUTH,))
    return SessionContextFactory(
        ServerCredentials(chain=(server, ca), private_key=server_key, client_cas=(ca,))  # type: ignore[arg-type]
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    if len(sys.argv) > 2:  # one measurement in a fresh process, so RSS is not reused memory
        measure(make_factory(), n, request=sys.argv[2] == "request")
        return
    print(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(), f"N={n}")
    for mode in ("none", "request"):
        subprocess.run([sys.executable, __file__, str(n), mode], check=True)
    factory = make_factory()
    measure_handshakes(factory, SSL.TLS1_2_VERSION)
    measure_handshakes(factory, SSL.TLS1_3_VERSION)


if __name__ == "__main__":
    main()
