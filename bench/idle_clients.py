"""Many idle, logged-in FTPS sessions from one process (asyncio, no thread per session).

`python -m bench.idle_clients --port N --user NAME --cafile CA --sessions N` (password in
BENCH_PASSWORD) connects N control connections to 127.0.0.1, each bound to one of the
loopback source addresses 127.0.0.2-127.0.0.20 in turn, and on each does AUTH TLS,
USER/PASS, PBSZ 0 and PROT P, then leaves it idle. When all are logged in it prints one
JSON line (`{"ready": N, ...}`) on stdout and waits; a line or end of file on stdin
closes every session and ends the process. On the first failure it prints
`{"error": "..."}` and exits 1. Loopback only: a host outside 127.0.0.0/8 is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import ssl
import sys
import time
from dataclasses import dataclass

DEFAULT_SOURCES = (2, 20)  # 127.0.0.2 .. 127.0.0.20
CONCURRENCY = 8  # logins in flight: below our verification pool's capacity (cores + 4 x cores)
STEP_TIMEOUT = 60.0


class ReplyError(Exception):
    """The server answered a command with an unexpected reply."""


@dataclass(frozen=True)
class Login:
    """Where and as whom the sessions log in."""

    host: str
    port: int
    user: str
    password: str
    cafile: str


def source_addresses(low: int, high: int) -> list[str]:
    """The loopback source addresses 127.0.0.LOW .. 127.0.0.HIGH."""
    if not 1 <= low <= high <= 254:
        raise ValueError(f"source range {low}-{high} must lie within 1-254")
    return [f"127.0.0.{last}" for last in range(low, high + 1)]


def parse_sources(text: str) -> tuple[int, int]:
    """`2-20` -> (2, 20): the last octets of the 127.0.0.x source addresses."""
    try:
        low_text, high_text = text.split("-", 1)
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ValueError(f"source range must look like 2-20, not {text!r}") from None
    source_addresses(low, high)
    return low, high


def reply_complete(lines: list[bytes]) -> bool:
    """True when `lines` (CRLF stripped) end an FTP reply: `DDD text` after any `DDD-`."""
    if not lines:
        return False
    first, last = lines[0], lines[-1]
    code = first[:3]
    if len(first) >= 4 and first[3:4] == b"-":
        return len(lines) > 1 and last[:3] == code and last[3:4] == b" "
    return True


def reply_code(lines: list[bytes]) -> int:
    """The reply's three-digit code, or ReplyError."""
    head = lines[0][:3] if lines else b""
    if len(head) != 3 or not head.isdigit():
        raise ReplyError(f"not an FTP reply: {lines[:1]!r}")
    return int(head)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One (possibly multi-line) reply: its code and last line."""
    lines: list[bytes] = []
    while not reply_complete(lines):
        line = await reader.readline()
        if not line:
            raise ReplyError("connection closed by the server")
        lines.append(line.rstrip(b"\r\n"))
    return reply_code(lines), lines[-1].decode(errors="replace")


async def command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str, expect: int
) -> None:
    writer.write(text.encode() + b"\r\n")
    await writer.drain()
    code, line = await read_reply(reader)
    if code != expect:
        shown = "PASS ****" if text.startswith("PASS ") else text
        raise ReplyError(f"{shown}: {line}")


async def open_session(
    login: Login, context: ssl.SSLContext, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One control connection from `source`: AUTH TLS, USER/PASS, PBSZ 0, PROT P."""
    reader, writer = await asyncio.open_connection(login.host, login.port, local_addr=(source, 0))
    try:
        code, line = await read_reply(reader)
        if code != 220:
            raise ReplyError(f"greeting: {line}")
        await command(reader, writer, "AUTH TLS", 234)
        await writer.start_tls(context, server_hostname=login.host)
        await command(reader, writer, f"USER {login.user}", 331)
        await command(reader, writer, f"PASS {login.password}", 230)
        await command(reader, writer, "PBSZ 0", 200)
        await command(reader, writer, "PROT P", 200)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def open_sessions(
    login: Login, count: int, sources: list[str], concurrency: int = CONCURRENCY
) -> list[asyncio.StreamWriter]:
    """`count` logged-in sessions, source addresses in turn; raises on the first failure."""
    context = ssl.create_default_context(cafile=login.cafile)
    gate = asyncio.Semaphore(concurrency)
    writers: list[asyncio.StreamWriter] = []

    async def one(index: int) -> None:
        async with gate:
            source = sources[index % len(sources)]
            try:
                _, writer = await asyncio.wait_for(
                    open_session(login, context, source), STEP_TIMEOUT
                )
            except TimeoutError:
                raise ReplyError(f"session {index + 1} from {source}: timed out") from None
            except (OSError, ssl.SSLError, ReplyError) as error:
                raise ReplyError(
                    f"session {index + 1} from {source}: {type(error).__name__}: {error}"
                ) from None
            writers.append(writer)

    tasks = [asyncio.ensure_future(one(index)) for index in range(count)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        close_all(writers)
        raise
    return writers


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        transport = writer.transport
        transport.abort()


def raise_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards `wanted` (at most the hard limit); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


async def _main(login: Login, count: int, sources: list[str]) -> int:
    started = time.monotonic()
    try:
        writers = await open_sessions(login, count, sources)
    except ReplyError as error:
        print(json.dumps({"error": str(error)}), flush=True)
        return 1
    elapsed = time.monotonic() - started
    print(
        json.dumps({"ready": len(writers), "seconds": elapsed, "sources": len(sources)}),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    close_all(writers)
    await asyncio.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_clients")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--sources", default="2-20", help="last octets of 127.0.0.x (2-20)")
    args = parser.parse_args(argv)
    password = os.environ.get("BENCH_PASSWORD")
    if not password:
        parser.error("BENCH_PASSWORD is not set")
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            parser.error(f"{args.host} is not a loopback address")
        low, high = parse_sources(args.sources)
    except ValueError as error:
        parser.error(str(error))
    if args.sessions <= 0:
        parser.error("--sessions must be positive")
    soft = raise_file_limit(args.sessions + 64)
    if soft < args.sessions + 16:
        print(json.dumps({"error": f"RLIMIT_NOFILE is {soft}, too low for the sessions"}))
        return 1
    login = Login(args.host, args.port, args.user, password, args.cafile)
    return asyncio.run(_main(login, args.sessions, source_addresses(low, high)))


if __name__ == "__main__":
    raise SystemExit(main())
