"""pyftpdlib as a bench peer: `python -m bench.peer_pyftpdlib --port N ...`.

One DummyAuthorizer user on the shared home, TLS_FTPHandler (explicit FTPS, TLS
optional) with the bench server certificate. The password comes from BENCH_PASSWORD.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer

from bench.servers import cold_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_pyftpdlib")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--passive", required=True, help="LOW-HIGH")
    parser.add_argument("--home", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--certificate", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--max-sessions", type=int, default=512)
    parser.add_argument(
        "--cold-users",
        type=int,
        default=0,
        help="also add cold00001..N with BENCH_COLD_PASSWORD, same home (cold-login metric)",
    )
    args = parser.parse_args(argv)
    password = os.environ.get("BENCH_PASSWORD")
    if not password:
        print("peer_pyftpdlib: BENCH_PASSWORD is not set", file=sys.stderr)
        return 2
    low, high = (int(part) for part in args.passive.split("-"))

    # Per-command INFO logging would cost pyftpdlib more than the peers (whose
    # transfer logs are off) pay: keep warnings only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, password, args.home, perm="elradfmwMT")
    if args.cold_users:
        cold_password = os.environ.get("BENCH_COLD_PASSWORD")
        if not cold_password:
            print("peer_pyftpdlib: BENCH_COLD_PASSWORD is not set", file=sys.stderr)
            return 2
        for name in cold_names(args.cold_users):
            authorizer.add_user(name, cold_password, args.home, perm="elradfmwMT")

    class Handler(TLS_FTPHandler):
        pass

    Handler.authorizer = authorizer
    Handler.certfile = args.certificate
    Handler.keyfile = args.key
    Handler.tls_control_required = False
    Handler.tls_data_required = False
    Handler.passive_ports = list(range(low, high + 1))
    Handler.banner = "pyftpdlib bench"

    server = FTPServer(("127.0.0.1", args.port), Handler)
    server.max_cons = args.max_sessions
    server.max_cons_per_ip = 0
    try:
        server.serve_forever(handle_exit=True)
    finally:
        server.close_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
