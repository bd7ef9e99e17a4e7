"""`python -m hardening fuzz`: generated command lines and malformed TLS records against a
live server in a subprocess, while a separate session's NOOP round trip is sampled.

Pass: the server process is alive at the end, its log has no traceback, and it still
serves a new session (TLS login, upload, download, listing). The NOOP figures are
reported, not judged. Every loop is bounded by a count and by `max_seconds`.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardening.clients import (
    Closed,
    Control,
    client_hello,
    open_session,
    read_until_closed,
)
from hardening.grammar import command_line, tls_payload
from hardening.server import ServerProcess
from hardening.stats import Sampler, finish_report, summary_ms

FUZZ_SERVER = """
login_timeout = 10
idle_timeout = 60
data_timeout = 2
max_sessions = 2000
max_sessions_per_address = 500
max_login_failures = 1000000
ban_time = 1
"""


@dataclass
class FuzzOptions:
    lines: int = 100_000
    tls_records: int = 1_000
    workers: int = 8
    tls_workers: int = 16
    seed: int = 0
    max_seconds: float = 1500.0
    keep: bool = False
    json_path: Path | None = None


@dataclass
class Counters:
    """Shared tallies; every change holds the lock."""

    lines: int = 0
    bytes: int = 0
    connections: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    stalls: int = 0
    replies: dict[str, int] = field(default_factory=dict)
    tls: dict[str, int] = field(default_factory=dict)
    tls_kinds: dict[str, int] = field(default_factory=dict)
    health_failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, count: int, budget: int) -> int:
        with self.lock:
            granted = max(0, min(count, budget - self.lines))
            self.lines += granted
            return granted

    def add(self, name: str, value: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + value)

    def tally(self, table: str, key: str) -> None:
        with self.lock:
            counts = getattr(self, table)
            counts[key] = counts.get(key, 0) + 1


class Sink:
    """A loopback listener the fuzzer owns: PORT/EPRT lines point the server here."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(10_000_000):  # accept timeouts of 0.5 s: bounded by the run
            if self._stop.is_set():
                return
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            read_until_closed(connection, 0.2, keep=0)  # drain a download; end an upload soon
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _reply_codes(data: bytes) -> list[str]:
    return [
        line[:3].decode("ascii", "replace")
        for line in data.split(b"\r\n")
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" "
    ]


def command_worker(
    index: int,
    server: ServerProcess,
    options: FuzzOptions,
    counters: Counters,
    sink: Sink,
    deadline: float,
) -> None:
    """Connections that send generated lines in batches, each ended by a HELP sentinel."""
    rng = random.Random(options.seed * 1000 + index)
    logged_in = index % 4 != 0  # one worker in four stays before login
    source = sink.host  # PORT/EPRT to the sink name the control connection's own address
    batch_number = 0
    for _ in range(100_000):  # connections; bounded
        if time.monotonic() > deadline or counters.lines >= options.lines:
            return
        try:
            control = Control(server.explicit_port, source=source, timeout=10)
            if logged_in:
                control.login("alice", server.password)
        except (Closed, OSError):
            counters.add("stalls")
            time.sleep(0.2)
            continue
        counters.add("connections")
        try:
            for _ in range(60):  # batches per connection
                if time.monotonic() > deadline:
                    return
                granted = counters.claim(rng.randint(1, 12), options.lines)
                if not granted:
                    return
                batch_number += 1
                sentinel = f"ZZSENTINEL{index}X{batch_number}"
                target = (sink.host, sink.port)
                payload = b"".join(command_line(rng, target) for _ in range(granted))
                payload += b"\r\nHELP " + sentinel.encode() + b"\r\n"
                counters.add("bytes", len(payload))
                control.sock.settimeout(10)
                control.send(payload)
                if not _await_sentinel(control, sentinel, counters):
                    break
        except (Closed, OSError) as error:
            counters.tally("closes", f"on send: {error.__class__.__name__}")
        finally:
            control.close()


def _await_sentinel(control: Control, sentinel: str, counters: Counters) -> bool:
    """Read replies until the sentinel's; False when the connection is closed or stuck."""
    received = bytearray(control.buffer)
    control.buffer.clear()
    deadline = time.monotonic() + 6
    marker = sentinel.encode()
    while marker not in received:
        left = deadline - time.monotonic()
        if left <= 0:
            counters.add("stalls")
            return False
        control.sock.settimeout(left)
        try:
            chunk = control.sock.recv(65536)
        except TimeoutError:
            counters.add("stalls")
            return False
        except OSError:
            chunk = b""
        if not chunk:
            _count(received, counters)
            lines = [line for line in bytes(received).split(b"\r\n") if line[:3].isdigit()]
            last = lines[-1].decode("utf-8", "replace")[:48] if lines else "without a reply"
            counters.tally("closes", last)
            return False
        received += chunk
    _count(received, counters)
    return True


def _count(received: bytes | bytearray, counters: Counters) -> None:
    for code in _reply_codes(bytes(received)):
        counters.tally("replies", code[0] + "xx")


def tls_case(
    index: int, server: ServerProcess, hello: bytes, options: FuzzOptions, counters: Counters
) -> None:
    """One connection with a malformed TLS opening, on the implicit port or after AUTH TLS."""
    rng = random.Random(options.seed * 7919 + index)
    kind, payload = tls_payload(rng, hello)
    counters.tally("tls_kinds", kind)
    explicit = rng.random() < 0.3
    port = server.explicit_port if explicit else server.implicit_port
    source = f"127.0.0.{200 + index % 50}"
    try:
        sock = socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
    except OSError:
        counters.tally("tls", "connect failed")
        return
    try:
        if explicit:
            control = Control(0, sock=sock, timeout=5)
            if not control.command("AUTH TLS").startswith("234"):
                counters.tally("tls", "no 234")
                return
        pieces = rng.randint(1, 3)
        step = max(1, len(payload) // pieces)
        for start in range(0, len(payload), step):
            sock.sendall(payload[start : start + step])
            if pieces > 1:
                time.sleep(0.01)
        received, how = read_until_closed(sock, 1.0, keep=16)
        if received[:1] == b"\x15":
            outcome = "alert, then closed" if how != "timeout" else "alert"
        elif received[:1] == b"\x16":
            outcome = "handshake answered"
        elif how == "timeout":
            outcome = "waiting (we closed)"
        else:
            outcome = "closed by server"
        counters.tally("tls", outcome)
    except OSError:
        counters.tally("tls", "reset by server")
    finally:
        if rng.random() < 0.5:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        sock.close()


def health_check(server: ServerProcess, label: str, counters: Counters) -> None:
    """A real TLS session: login, upload, download (SHA-256), listing."""
    data = os.urandom(256 * 1024)
    try:
        ftp = open_session(
            server.implicit_port,
            "alice",
            server.password,
            mode="implicit",
            pki=server.pki,
            timeout=20,
        )
        ftp.cwd("/")
        ftp.storbinary(f"STOR health-{label}.bin", io.BytesIO(data))
        back = io.BytesIO()
        ftp.retrbinary(f"RETR health-{label}.bin", back.write)
        names = ftp.nlst()
        ftp.delete(f"health-{label}.bin")
        ftp.quit()
        if hashlib.sha256(back.getvalue()).digest() != hashlib.sha256(data).digest():
            counters.health_failures.append(f"{label}: download differs")
        if f"health-{label}.bin" not in names:
            counters.health_failures.append(f"{label}: not listed")
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        counters.health_failures.append(f"{label}: {error!r}")


def noop_probe(server: ServerProcess, state: dict[str, Any]) -> float | None:
    """One NOOP round trip on the sampling session (reconnects after a failure)."""
    control = state.get("control")
    try:
        if control is None:
            control = Control(server.explicit_port, source="127.0.0.2", timeout=10)
            control.login("alice", server.password)
            state["control"] = control
        started = time.perf_counter()
        reply = control.command("NOOP")
        elapsed = time.perf_counter() - started
        if not reply.startswith("200"):
            raise Closed(reply)
        return elapsed
    except (Closed, OSError):
        state["failures"] = state.get("failures", 0) + 1
        if control is not None:
            control.close()
        state["control"] = None
        return None


def run(options: FuzzOptions) -> int:
    """Run the fuzzer; print and return the exit status (0: no crash found)."""
    started = time.monotonic()
    deadline = started + options.max_seconds
    root = Path(tempfile.mkdtemp(prefix="st-fuzz-"))
    root.chmod(0o755)
    server = ServerProcess(root / "server", extra_server=FUZZ_SERVER).start()
    print(
        f"fuzz: server pid {server.pid} on 127.0.0.1:{server.explicit_port} (explicit), "
        f":{server.implicit_port} (implicit); {options.lines} lines, "
        f"{options.tls_records} TLS records, seed {options.seed}",
        flush=True,
    )
    counters = Counters()
    sinks = [Sink(f"127.0.0.{100 + i % 100}") for i in range(options.workers)]
    probe_state: dict[str, Any] = {}
    noop = Sampler(lambda: noop_probe(server, probe_state), 0.02).start()
    rss = Sampler(lambda: server.rss_kib(), 1.0).start()
    health_check(server, "start", counters)
    hello = client_hello()

    def tls_phase() -> None:
        with ThreadPoolExecutor(options.tls_workers) as pool:
            for batch in range(0, options.tls_records, 250):
                cases = range(batch, min(options.tls_records, batch + 250))
                list(pool.map(lambda i: tls_case(i, server, hello, options, counters), cases))
                health_check(server, f"tls-{batch}", counters)
                if time.monotonic() > deadline:
                    return

    threads = [threading.Thread(target=tls_phase, name="tls")]
    threads += [
        threading.Thread(
            target=command_worker,
            name=f"lines-{i}",
            args=(i, server, options, counters, sinks[i], deadline),
        )
        for i in range(options.workers)
    ]
    for thread in threads:
        thread.start()
    last_report = time.monotonic()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(1.0)
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            print(
                f"  {counters.lines} lines, {sum(counters.tls.values())} TLS records, "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
    elapsed = time.monotonic() - started
    noop.stop()
    rss.stop()
    health_check(server, "end", counters)
    control = probe_state.get("control")
    if control is not None:
        control.close()
    for sink in sinks:
        sink.close()
    alive = server.alive()
    problems = server.log_problems()
    rss_values = rss.values
    report = {
        "lines": counters.lines,
        "bytes": counters.bytes,
        "connections": counters.connections,
        "connections_closed_by_server": dict(sorted(counters.closes.items())),
        "stalled_batches": counters.stalls,
        "replies": dict(sorted(counters.replies.items())),
        "tls_records": sum(counters.tls.values()),
        "tls_outcomes": dict(sorted(counters.tls.items())),
        "tls_kinds": dict(sorted(counters.tls_kinds.items())),
        "active_connections_to_sinks": sum(sink.accepted for sink in sinks),
        "seconds": round(elapsed, 1),
        "noop_round_trip": summary_ms(noop.values),
        "noop_session_failures": probe_state.get("failures", 0),
        "server_rss_kib": {
            "first": int(rss_values[0]) if rss_values else None,
            "max": int(max(rss_values)) if rss_values else None,
            "last": int(rss_values[-1]) if rss_values else None,
        },
        "server_alive": alive,
        "log_problems": problems[:20],
        "health_failures": counters.health_failures,
        "seed": options.seed,
    }
    server.stop()
    ok = alive and not problems and not counters.health_failures
    ok = ok and counters.lines >= options.lines and report["tls_records"] >= options.tls_records
    return finish_report(
        "fuzz", report, ok, json_path=options.json_path, root=root, keep=options.keep
    )
