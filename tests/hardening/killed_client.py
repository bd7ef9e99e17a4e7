"""A client process that starts an upload and keeps sending until it is killed (SIGKILL).

`python -m tests.hardening.killed_client PORT MODE PKI`: prints "sending" once the first
256 KiB are out; sends 64 KiB every 50 ms after that, for 20 s at most.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hardening.clients import open_session
from tests.e2e.harness import PASSWORD


def main() -> None:
    port, mode, pki = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    ftp = open_session(port, "alice", PASSWORD, mode=mode, pki=pki)
    conn = ftp.transfercmd("STOR keep.bin")
    conn.sendall(b"n" * 262144)
    print("sending", flush=True)
    for _ in range(400):
        conn.sendall(b"n" * 65536)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
