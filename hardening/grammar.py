"""Generators of hostile input: FTP command lines and malformed TLS records. Pure: give a Random.

`command_line(rng, sink)` mixes real verbs with hostile arguments, random verbs,
random bytes, overlong lines, Telnet IAC sequences, bare CR/LF, NUL and invalid UTF-8.
Active-mode arguments only ever name the fuzzer's own listener (`sink`: host and port),
other loopback addresses (refused by the server) or malformed values.
`tls_payload(rng, hello)` mutates a real ClientHello or builds records from scratch.
"""

from __future__ import annotations

import random
import struct

VERBS = (
    "USER PASS ACCT QUIT REIN SYST FEAT OPTS HELP NOOP STAT SITE PWD XPWD CWD CDUP XCUP MKD "
    "XMKD RMD XRMD DELE RNFR RNTO SIZE MDTM MFMT LIST NLST MLSD MLST RETR STOR STOU APPE REST "
    "ALLO ABOR TYPE MODE STRU PASV EPSV PORT EPRT HASH CLNT AUTH PBSZ PROT CCC"
).split()
# Verbs that end or reset a session, or wait for a data connection: kept rare.
RARE = {"QUIT", "REIN", "AUTH", "PASS", "PASV", "EPSV", "PORT", "EPRT"}
COMMON = [verb for verb in VERBS if verb not in RARE]

PATH_PIECES = (
    "..",
    ".",
    "...",
    "%2e%2e",
    "%252e",
    "..\\",
    "\\",
    "~",
    "~root",
    "*",
    "?",
    "[a-z]",
    "\u2215",
    "\uff0f",
    "\uff0e\uff0e",
    "\u202e",
    "\u0000",
    "\r",
    "con",
    "nul",
    "aux",
    ".st-upload-",
    ".st-upload-00ff",
    "a" * 255,
    "a" * 256,
    "\U0001f600",
    "\udcff",
    "etc",
    "passwd",
    "/",
    "//",
    "fuzz",
    "dir",
    "file.txt",
    " ",
    "-la",
    "-R",
)
NUMBERS = (
    "0",
    "-1",
    "1",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e9",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "",
    "NaN",
    "\u0661\u0662",
)
FORMATS = (
    "%s%s%s%n",
    "%x" * 20,
    "{0}{1}",
    "${jndi:ldap://127.0.0.1/a}",
    "$(id)",
    "`id`",
    "'; DROP TABLE accounts; --",
    "<script>",
    "\u202egnp.exe",
    "A" * 1000,
)


def _choice(rng: random.Random, items: tuple[str, ...] | list[str]) -> str:
    return items[rng.randrange(len(items))]


def hostile_path(rng: random.Random) -> str:
    """A path made of hostile pieces joined by slashes, backslashes or nothing."""
    pieces = [_choice(rng, PATH_PIECES) for _ in range(rng.randint(1, 8))]
    glue = _choice(rng, ("/", "/", "\\", "", "//"))
    path = glue.join(pieces)
    if rng.random() < 0.3:
        path = "/" + path
    return path


def port_argument(sink: tuple[str, int]) -> str:
    host, port = sink
    return f"{host.replace('.', ',')},{port >> 8},{port & 255}"


def active_argument(rng: random.Random, verb: str, sink: tuple[str, int]) -> str:
    """PORT/EPRT arguments: the fuzzer's own sink, refused addresses, or malformed ones."""
    sink_port = sink[1]
    high, low = sink_port >> 8, sink_port & 255
    if verb == "PORT":
        return _choice(
            rng,
            (
                port_argument(sink),
                f"127,0,0,2,{high},{low}",
                "127,0,0,1,0,21",
                "10,0,0,1,4,1",
                "0,0,0,0,0,0",
                "256,1,1,1,1,1",
                "127,0,0,1,999,999",
                "1,2,3",
                ",,,,,",
                "127,0,0,1,-1,5",
                f"127,0,0,1,{high},{low},7",
            ),
        )
    return _choice(
        rng,
        (
            f"|1|{sink[0]}|{sink_port}|",
            f"|1|127.0.0.2|{sink_port}|",
            f"|2|::1|{sink_port}|",
            "|1|127.0.0.1|21|",
            "|3|127.0.0.1|5000|",
            "||||",
            "|1|999.0.0.1|5000|",
            f"!1!127.0.0.1!{sink_port}!",
            "|1|127.0.0.1|",
            "\x00|1|127.0.0.1|5000|",
        ),
    )


def argument_for(rng: random.Random, verb: str, sink: tuple[str, int]) -> str | None:
    """A hostile (sometimes valid) argument for `verb`; None for no argument."""
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.15:
        return _choice(rng, FORMATS)
    if verb in ("LIST", "NLST", "MLSD") and roll < 0.4:
        return None if roll < 0.3 else "-la"
    if verb in ("STOR", "STOU", "APPE", "RETR", "SIZE", "DELE") and roll < 0.35:
        return f"fuzz-{rng.randrange(20)}.bin"  # names that exist now and then
    if verb in ("PORT", "EPRT"):
        return active_argument(rng, verb, sink)
    if verb in ("REST", "ALLO", "PBSZ"):
        return _choice(rng, NUMBERS)
    if verb in ("TYPE", "MODE", "STRU", "PROT"):
        return _choice(
            rng,
            (
                "A",
                "I",
                "L 8",
                "L 7",
                "E",
                "S",
                "F",
                "R",
                "P",
                "C",
                "B",
                "Z",
                "A N",
                "a",
                "I I I",
                "\x00",
            ),
        )
    if verb == "OPTS":
        return _choice(
            rng,
            (
                "UTF8 ON",
                "UTF8 OFF",
                "MLST size;type;",
                "MLST " + "x;" * 300,
                "HASH SHA-256",
                "HASH MD5",
                "MODE Z",
                "",
            ),
        )
    if verb == "MFMT":
        stamp = _choice(
            rng,
            (
                "20200101000000",
                "99999999999999",
                "2020010100000",
                "20201301000000",
                "-1",
                "20200101000000.123",
            ),
        )
        return f"{stamp} {hostile_path(rng)}"
    if verb in ("HELP", "SITE"):
        return _choice(rng, tuple(VERBS)) + _choice(rng, ("", " x", "\x00", "ZZZZ"))
    if verb == "AUTH":
        return _choice(rng, ("GSSAPI", "KERBEROS_V4", "TLS ", "X" * 100, "", "TLS-X"))
    if verb == "EPSV":
        return _choice(rng, ("1", "2", "3", "ALL", "all", "-1", "1 2"))
    if verb == "USER":
        return _choice(
            rng,
            (
                "alice",
                "root",
                "anonymous",
                "a" * 65,
                ".hidden",
                "a/b",
                "a\x00b",
                "nobody-here",
                "ALICE",
                "alice ",
                "\u00e9",
            ),
        )
    if verb == "STAT" and rng.random() < 0.5:
        return "-la " + hostile_path(rng)
    return hostile_path(rng)


def _valid_line(rng: random.Random, sink: tuple[str, int]) -> bytes:
    if rng.random() < 0.04:  # active mode to the fuzzer's sink: later transfers really run
        if rng.random() < 0.5:
            return f"PORT {port_argument(sink)}".encode()
        return f"EPRT |1|{sink[0]}|{sink[1]}|".encode()
    verb = _choice(rng, COMMON) if rng.random() < 0.97 else _choice(rng, sorted(RARE - {"AUTH"}))
    if rng.random() < 0.2:
        verb = "".join(c.lower() if rng.random() < 0.5 else c for c in verb)
    argument = argument_for(rng, verb.upper(), sink)
    text = verb if argument is None else f"{verb} {argument}"
    return text.encode("utf-8", "surrogatepass")


def _random_verb_line(rng: random.Random) -> bytes:
    letters = bytes(rng.randrange(65, 91) for _ in range(rng.randint(1, 6)))
    return letters + b" " + bytes(rng.randrange(32, 127) for _ in range(rng.randint(0, 40)))


_BAD_UTF8 = (
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\x28",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xff\xfe",
    b"\xf8\x88\x80\x80\x80",
)


def _invalid_utf8(rng: random.Random) -> bytes:
    verb = _choice(rng, COMMON).encode()
    bad = _BAD_UTF8[rng.randrange(len(_BAD_UTF8))]
    return verb + b" " + bad + hostile_path(rng).encode("utf-8", "surrogatepass")


def _telnet(rng: random.Random) -> bytes:
    return _choice(
        rng,
        (
            "\xff\xf4\xff\xf2ABOR",
            "\xff\xfb\x01NOOP",
            "\xff\xff\xffNOOP",
            "NOOP\xff",
            "\xff\xfd",
            "\xff",
            "\xff\xfa\x18\x00\xff\xf0STAT",
            "\xff\xf1\xff\xf1NOOP",
        ),
    ).encode("latin-1")


def _line_end(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.8:
        return b"\r\n"
    if roll < 0.9:
        return b"\n"
    return _choice(rng, ("\r\r\n", "\n\r\n", "\r\n\r\n", "\n\n")).encode()


def command_line(rng: random.Random, sink: tuple[str, int]) -> bytes:
    """One generated command line, with its line end (sometimes an odd one)."""
    roll = rng.random()
    if roll < 0.60:
        body = _valid_line(rng, sink)
    elif roll < 0.68:
        body = _random_verb_line(rng)
    elif roll < 0.75:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))).replace(b"\n", b"")
    elif roll < 0.76:
        body = _choice(rng, COMMON).encode() + b" " + b"A" * rng.randint(4090, 12000)
    elif roll < 0.82:
        body = _telnet(rng)
    elif roll < 0.87:
        body = _choice(rng, ("", "\r", "\r\r", " ", "\t", "NOOP\rNOOP", "\rNOOP")).encode()
    elif roll < 0.92:
        line = bytearray(_valid_line(rng, sink))
        line.insert(rng.randint(0, len(line)), 0)
        body = bytes(line)
    else:
        body = _invalid_utf8(rng)
    return body + _line_end(rng)


# ----------------------------------------------------------------------------------- TLS


def record(content_type: int, payload: bytes, version: bytes = b"\x03\x03") -> bytes:
    return bytes([content_type]) + version + struct.pack(">H", len(payload) & 0xFFFF) + payload


def tls_payload(rng: random.Random, hello: bytes) -> tuple[str, bytes]:
    """(kind, bytes) of one malformed TLS opening, built from a real ClientHello `hello`."""
    kind = _choice(
        rng,
        (
            "truncated",
            "bit flips",
            "random type",
            "length lies",
            "sslv2 hello",
            "fragmented",
            "alert first",
            "ccs first",
            "heartbeat",
            "garbage after hello",
            "zero length",
            "huge handshake length",
            "random bytes",
            "hello twice",
            "wrong version",
        ),
    )
    if kind == "truncated":
        return kind, hello[: rng.randrange(1, len(hello))]
    if kind == "bit flips":
        data = bytearray(hello)
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "random type":
        content_type = rng.choice([0, 1, 19, 20, 21, 22, 23, 24, 25, 99, 128, 255])
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 600)))
        return kind, record(content_type, body)
    if kind == "length lies":
        length = rng.choice([0, 1, 16384, 16385, 18432, 65535])
        return kind, hello[:3] + struct.pack(">H", length) + hello[5:]
    if kind == "sslv2 hello":
        body = b"\x01\x03\x01\x00\x0c\x00\x00\x00\x10" + b"\x00\x00\x2f" * 4 + bytes(16)
        return kind, bytes([0x80, len(body)]) + body
    if kind == "fragmented":
        body = hello[5:]
        pieces = [body[i : i + rng.randint(1, 7)] for i in range(0, len(body), 4)]
        return kind, b"".join(record(22, piece) for piece in pieces[: rng.randint(1, 200)])
    if kind == "alert first":
        return kind, record(21, bytes([rng.choice([1, 2]), rng.randrange(256)])) + hello
    if kind == "ccs first":
        return kind, record(20, b"\x01") + hello
    if kind == "heartbeat":
        return kind, record(24, b"\x01\x40\x00" + b"A" * 3)
    if kind == "garbage after hello":
        return kind, hello + bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    if kind == "zero length":
        return kind, record(22, b"") * rng.randint(1, 50)
    if kind == "huge handshake length":
        handshake = bytearray(hello[5:])
        handshake[1:4] = b"\xff\xff\xff"
        return kind, hello[:5] + bytes(handshake)
    if kind == "hello twice":
        return kind, hello + hello
    if kind == "wrong version":
        version = rng.choice([b"\x02\x00", b"\x03\x00", b"\x03\x05", b"\xfe\xff", b"\x00\x00"])
        return kind, hello[:1] + version + hello[3:]
    return kind, bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
