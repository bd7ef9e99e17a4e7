"""What the edge in the DMZ costs (issue #11): FTPS direct to the server against the same
through an edge, in the same run.

`python -m bench.edge` starts a server and an edge as two twistd processes on loopback
(the edge's listeners on 127.0.0.2, its link on 127.0.0.3, the server on 127.0.0.1),
then alternates direct and via-edge runs of curl over explicit FTPS with TLS session
reuse: RETR and STOR of one file (MB/s, and the CPU of server + edge per GiB from
/proc), and sessions (login, a listing, quit; sessions/s and CPU per session). Medians of
`--repetitions` interleaved runs; both processes share this machine's cores with curl,
so the ratio is the figure. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hardening.server import DEFAULT_CLASSES, PASSWORD, ServerProcess, free_port
from securetransport.edge.link import init_link_pki
from tests.edge.harness import EDGE_HOST, LINK_HOST, edge_certificate
from tests.edge.test_edge_processes import EdgeProcess


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def curl(pki: Path, *args: str) -> None:
    command = ["curl", "--silent", "--show-error", "--ssl-reqd", "--max-time", "120",
               "--cacert", str(pki / "ca.crt"), "-u", f"alice:{PASSWORD}", *args]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=40)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="st-bench-edge-", dir="/tmp")).resolve()
    os.chmod(root, 0o755)
    link_port = free_port(LINK_HOST)
    edge_table = f"""
[[edge]]
name = "dmz1"
address = "{LINK_HOST}"
port = {link_port}
certificate = "pki/link-server.crt"
private_key = "pki/link-server.key"
ca = "pki/link-ca.crt"
"""
    server = ServerProcess(root / "server", classes=DEFAULT_CLASSES + edge_table)
    server.prepare()
    init_link_pki(server.pki)
    edge_certificate(server.pki)
    edge = EdgeProcess(root / "edge", server.pki, link_port)
    try:
        server.start()
        edge.start()
        edge.wait_greeting("220")
        big = server.home() / "big.bin"
        with open(big, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(1 << 20))
        server.give(big)
        upload = root / "upload.bin"
        upload.write_bytes(big.read_bytes())
        routes = {
            "direct": f"ftp://127.0.0.1:{server.explicit_port}",
            "via edge": f"ftp://{EDGE_HOST}:{edge.explicit_port}",
        }
        assert edge.process is not None
        pids = [server.pid, edge.process.pid]
        results: dict[str, dict[str, list[float]]] = {r: {} for r in routes}

        def timed(route: str, metric: str, per: float, action: Callable[[], None]) -> None:
            cpu = sum(cpu_seconds(p) for p in pids)
            started = time.monotonic()
            action()
            seconds = time.monotonic() - started
            used = sum(cpu_seconds(p) for p in pids) - cpu
            results[route].setdefault(metric, []).append(per / seconds)
            results[route].setdefault(metric + " cpu", []).append(used / per)

        for _ in range(args.repetitions):
            for route, url in routes.items():
                mb = args.size_mib * 1.048576

                def retr(url: str = url) -> None:
                    curl(server.pki, f"{url}/big.bin", "-o", "/dev/null")

                def stor(url: str = url) -> None:
                    curl(server.pki, "-T", str(upload), f"{url}/up.bin")

                def sessions(url: str = url) -> None:
                    for _ in range(args.sessions):
                        curl(server.pki, f"{url}/")

                timed(route, "RETR MB/s", mb, retr)
                timed(route, "STOR MB/s", mb, stor)
                timed(route, "sessions/s", args.sessions, sessions)
        print(f"edge bench: {args.size_mib} MiB, {args.repetitions} interleaved runs, medians")
        print(f"{'figure':<24}{'direct':>12}{'via edge':>12}{'edge/direct':>13}")
        rows = [
            ("RETR MB/s", "RETR MB/s", 1.0),
            ("RETR CPU s/GiB", "RETR MB/s cpu", 1073.741824),  # CPU s per MB -> per GiB
            ("STOR MB/s", "STOR MB/s", 1.0),
            ("STOR CPU s/GiB", "STOR MB/s cpu", 1073.741824),
            ("sessions/s", "sessions/s", 1.0),
            ("CPU ms/session", "sessions/s cpu", 1000.0),
        ]
        for label, key, scale in rows:
            direct = statistics.median(results["direct"][key]) * scale
            via = statistics.median(results["via edge"][key]) * scale
            print(f"{label:<24}{direct:>12.2f}{via:>12.2f}{via / direct:>13.2f}")
    finally:
        edge.stop()
        server.kill()
        subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
