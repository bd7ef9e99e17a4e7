"""asyncssh's SFTP server for `python -m bench.sftp`: one account by key, chrooted.

Usage: python bench/peer_asyncssh_sftp.py PORT HOST_KEY AUTHORIZED_KEYS ROOT
Prints "listening PORT" when ready; runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh


async def serve(port: int, host_key: str, authorized: str, root: str) -> None:
    def sftp_factory(chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=root.encode())

    await asyncssh.listen(
        "127.0.0.1",
        port,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        sftp_factory=sftp_factory,
        allow_scp=False,
        process_factory=None,
    )
    print(f"listening {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    port, host_key, authorized, root = sys.argv[1:5]
    asyncio.run(serve(int(port), host_key, authorized, root))


if __name__ == "__main__":
    main()
