"""Tests for securetransport.ftp.parser: line splitting, Telnet, limits, command parsing."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from securetransport.ftp.parser import (
    MAX_LINE,
    Command,
    LineBuffer,
    LineTooLong,
    ParseError,
    parse_command,
    quote_path,
    sanitize_reply_text,
)

IAC = b"\xff"
IP = b"\xf4"
DM = b"\xf2"
WILL, WONT, DO, DONT = b"\xfb", b"\xfc", b"\xfd", b"\xfe"


# Chunks that reach the edge cases: long runs, line ends, Telnet bytes, random bytes.
CHUNKS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\r", b"\n", b"\r\n", IAC, IAC + IAC, IAC + DO, IAC + IP, DM, b"\xf0"]),
    st.tuples(
        st.integers(min_value=MAX_LINE - 3, max_value=MAX_LINE + 3),
        st.sampled_from([b"", b"\r", b"\n", b"\r\n"]),
    ).map(lambda run: b"x" * run[0] + run[1]),
    st.integers(min_value=0, max_value=3 * MAX_LINE).map(lambda n: b"y" * n),
)

_TELNET = re.compile(rb"\xff(?:\xff|[\xfb-\xfe][\s\S]?|[\xf0-\xfa])?")


def reference_lines(data: bytes) -> list[bytes | LineTooLong]:
    """What LineBuffer should return for `data` fed at once, written the naive way."""
    clean = _TELNET.sub(lambda m: b"\xff" if m.group() == IAC + IAC else b"", data)
    out: list[bytes | LineTooLong] = []
    for line in clean.split(b"\n")[:-1]:
        line = line[:-1] if line.endswith(b"\r") else line
        out.append(LineTooLong() if len(line) > MAX_LINE else line)
    return out


def feed_all(buffer: LineBuffer, *chunks: bytes) -> list[bytes | LineTooLong]:
    out: list[bytes | LineTooLong] = []
    for chunk in chunks:
        out.extend(buffer.feed(chunk))
    return out


class LineBufferTests(SynchronousTestCase):
    def test_line_endings(self) -> None:
        cases = [
            (b"NOOP\r\n", [b"NOOP"]),
            (b"NOOP\n", [b"NOOP"]),
            (b"NOOP\r\nPWD\nSYST\r\n", [b"NOOP", b"PWD", b"SYST"]),
            (b"\r\n", [b""]),
            (b"\n\n", [b"", b""]),
            (b"NOOP", []),
            (b"NOOP\r", []),
            (b"A\rB\r\n", [b"A\rB"]),  # a CR inside a line is not a line end
            (b"A\r\r\n", [b"A\r"]),  # only one CR before the LF is the line end
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                self.assertEqual(LineBuffer().feed(data), expected)

    def test_split_across_feeds(self) -> None:
        cases = [
            ((b"NO", b"OP\r\n"), [b"NOOP"]),
            ((b"NOOP\r", b"\n"), [b"NOOP"]),
            ((b"NOOP\r", b"\nPW", b"D\n"), [b"NOOP", b"PWD"]),
            ((b"N", b"O", b"O", b"P", b"\r", b"\n"), [b"NOOP"]),
            ((b"USER a\r\nPA", b"SS b\r\n"), [b"USER a", b"PASS b"]),
        ]
        for chunks, expected in cases:
            with self.subTest(chunks=chunks):
                self.assertEqual(feed_all(LineBuffer(), *chunks), expected)

    def test_pending(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.pending, 0)
        buffer.feed(b"USER al")
        self.assertEqual(buffer.pending, 7)
        self.assertEqual(buffer.feed(b"ice\r\nPW"), [b"USER alice"])
        self.assertEqual(buffer.pending, 2)

    def test_clear_drops_partial_line(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"AUTH TLS\r\nUSER inj"), [b"AUTH TLS"])
        buffer.clear()
        self.assertEqual(buffer.pending, 0)
        self.assertEqual(buffer.feed(b"ected\r\nUSER real\r\n"), [b"ected", b"USER real"])

    def test_clear_resets_discarding_and_telnet_state(self) -> None:
        buffer = LineBuffer()
        buffer.feed(b"x" * (MAX_LINE + 10))
        buffer.clear()
        self.assertEqual(buffer.feed(b"NOOP\r\n"), [b"NOOP"])
        buffer.feed(IAC)
        buffer.clear()
        self.assertEqual(buffer.feed(b"\xffA\r\n"), [b"A"])  # the new IAC is handled fresh
        buffer.feed(IAC + DO)
        buffer.clear()
        self.assertEqual(buffer.feed(b"NOOP\r\n"), [b"NOOP"])

    def test_limit_at_the_edge(self) -> None:
        cases = [
            (b"x" * MAX_LINE + b"\r\n", [b"x" * MAX_LINE]),
            (b"x" * MAX_LINE + b"\n", [b"x" * MAX_LINE]),
            (b"x" * (MAX_LINE + 1) + b"\r\n", [LineTooLong()]),
            (b"x" * (MAX_LINE + 1) + b"\n", [LineTooLong()]),
            (b"x" * (MAX_LINE + 1) + b"\r\nNOOP\r\n", [LineTooLong(), b"NOOP"]),
        ]
        for data, expected in cases:
            with self.subTest(length=len(data)):
                self.assertEqual(LineBuffer().feed(data), expected)

    def test_limit_at_the_edge_byte_by_byte(self) -> None:
        for length, expected in [
            (MAX_LINE, [b"x" * MAX_LINE, b"NOOP"]),
            (MAX_LINE + 1, [LineTooLong(), b"NOOP"]),
        ]:
            with self.subTest(length=length):
                buffer = LineBuffer()
                data = b"x" * length + b"\r\nNOOP\r\n"
                out = feed_all(buffer, *(data[i : i + 1] for i in range(len(data))))
                self.assertEqual(out, expected)

    def test_limit_spanning_feeds(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"x" * 3000), [])
        self.assertEqual(buffer.feed(b"x" * 1096), [])  # exactly MAX_LINE so far
        self.assertEqual(buffer.feed(b"x"), [LineTooLong()])  # marker as soon as passed
        self.assertEqual(buffer.pending, 0)
        # The rest of the line is discarded, however long, and no second marker.
        for _ in range(20):
            self.assertEqual(buffer.feed(b"y" * 5000), [])
            self.assertEqual(buffer.pending, 0)
        self.assertEqual(buffer.feed(b"yyy\r\nNOOP\r\n"), [b"NOOP"])

    def test_limit_waits_for_late_lf_after_cr(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"x" * MAX_LINE + b"\r"), [])
        self.assertEqual(buffer.feed(b"\n"), [b"x" * MAX_LINE])
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"x" * MAX_LINE + b"\r"), [])
        self.assertEqual(buffer.feed(b"z"), [LineTooLong()])
        self.assertEqual(buffer.feed(b"\r\nPWD\r\n"), [b"PWD"])

    def test_long_line_marker_in_order(self) -> None:
        buffer = LineBuffer()
        out = buffer.feed(b"NOOP\r\n" + b"x" * (MAX_LINE + 100))
        self.assertEqual(out, [b"NOOP", LineTooLong()])
        self.assertEqual(buffer.feed(b"\r\nPWD\r\n"), [b"PWD"])

    def test_line_too_long_reply(self) -> None:
        marker = LineTooLong()
        self.assertIsInstance(marker, ParseError)
        self.assertEqual(marker.code, 500)
        self.assertIn("too long", marker.text)

    def test_telnet(self) -> None:
        cases = [
            (IAC + IP + IAC + DM + b"ABOR\r\n", [b"ABOR"]),
            # The DM taken out of band by the kernel: IAC IP IAC ABOR.
            (IAC + IP + IAC + b"ABOR\r\n", [b"ABOR"]),
            (b"STOR a" + IAC + IAC + b"b\r\n", [b"STOR a\xffb"]),
            (IAC + WILL + b"\x01NOOP\r\n", [b"NOOP"]),
            (IAC + WONT + b"\x01" + IAC + DO + b"\x03" + IAC + DONT + b"\xffNOOP\r\n", [b"NOOP"]),
            (IAC + DO + b"\n" + b"NOOP\r\n", [b"NOOP"]),  # the option byte is not a line end
            (b"NO" + IAC + b"\xf1OP\r\n", [b"NOOP"]),  # IAC NOP
            (IAC + IAC + IAC + IAC + b"\r\n", [b"\xff\xff"]),
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                self.assertEqual(LineBuffer().feed(data), expected)

    def test_telnet_split_across_feeds(self) -> None:
        data = (
            IAC + IP + IAC + DM + b"ABOR\r\nSTOR x" + IAC + IAC + b"\r\n" + IAC + DO + b"\x01PWD\n"
        )
        expected = [b"ABOR", b"STOR x\xff", b"PWD"]
        for split in range(len(data) + 1):
            with self.subTest(split=split):
                self.assertEqual(feed_all(LineBuffer(), data[:split], data[split:]), expected)
        one_by_one = feed_all(LineBuffer(), *(data[i : i + 1] for i in range(len(data))))
        self.assertEqual(one_by_one, expected)

    def test_telnet_does_not_count_towards_limit(self) -> None:
        data = b"x" * MAX_LINE + (IAC + IP) * 100 + b"\r\n"
        self.assertEqual(LineBuffer().feed(data), [b"x" * MAX_LINE])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(CHUNKS, max_size=12))
    def test_property_feed(self, chunks: list[bytes]) -> None:
        buffer = LineBuffer()
        for chunk in chunks:
            for item in buffer.feed(chunk):
                if isinstance(item, LineTooLong):
                    continue
                self.assertIsInstance(item, bytes)
                self.assertLessEqual(len(item), MAX_LINE)
                self.assertNotIn(b"\n", item)
                self.assertIsInstance(parse_command(item), Command | ParseError)
            self.assertLessEqual(buffer.pending, MAX_LINE + 1)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(CHUNKS, max_size=30))
    @example([b"x" * MAX_LINE + b"\r", b"\n"])
    @example([b"x" * MAX_LINE + b"\r", b"x\n"])
    @example([b"x" * MAX_LINE, IAC, IAC + b"\r\n"])
    def test_property_matches_reference(self, pieces: list[bytes]) -> None:
        pieces = [*pieces, b"\0\n"]  # whatever the Telnet state, this ends the last line
        self.assertEqual(feed_all(LineBuffer(), *pieces), reference_lines(b"".join(pieces)))


class ParseCommandTests(SynchronousTestCase):
    def test_commands(self) -> None:
        cases = [
            (b"NOOP", "NOOP", None),
            (b"noop", "NOOP", None),
            (b"NoOp", "NOOP", None),
            (b"PWD", "PWD", None),
            (b"NOOP ", "NOOP", None),
            (b"USER alice", "USER", "alice"),
            (b"RETR my file.txt", "RETR", "my file.txt"),
            (b"RETR  leading space", "RETR", " leading space"),
            (b"RETR trailing ", "RETR", "trailing "),
            (b"CWD \xc3\xa9t\xc3\xa9", "CWD", "\u00e9t\u00e9"),
            (b"STOR a\xef\xbf\xbdb", "STOR", "a\ufffdb"),
            (b"NOOP\r\n", "NOOP", None),
            (b"PASS secret\n", "PASS", "secret"),
        ]
        for line, verb, argument in cases:
            with self.subTest(line=line):
                command = parse_command(line)
                assert isinstance(command, Command)
                self.assertEqual((command.verb, command.argument), (verb, argument))
                self.assertEqual(command.raw, line.rstrip(b"\r\n"))

    def test_errors(self) -> None:
        cases = [
            (b"", 500),
            (b"\r\n", 500),
            (b" NOOP", 500),
            (b"NO", 500),
            (b"NOOPS", 500),
            (b"NO1P", 500),
            (b"N\xc3\xa9OP", 500),
            (b"\xff\xfe\xfd", 500),
            (b"NOOP\tx", 500),
            (b"\xc3\xa9t\xc3\xa9 x", 500),
            (b"RETR \xff", 501),
            (b"RETR caf\xe9", 501),  # Latin-1, not UTF-8
            (b"RETR \xed\xa0\x80", 501),  # an encoded surrogate
            (b"RETR \xc3", 501),  # truncated sequence
        ]
        for line, code in cases:
            with self.subTest(line=line):
                result = parse_command(line)
                assert isinstance(result, ParseError)
                self.assertEqual(result.code, code)
        bad_verb = parse_command(b"XYZZY")
        assert isinstance(bad_verb, ParseError)
        self.assertEqual(bad_verb.text, "Syntax error, command unrecognized")
        bad_utf8 = parse_command(b"CWD \xff")
        assert isinstance(bad_utf8, ParseError)
        self.assertEqual(bad_utf8.text, "Invalid UTF-8 in argument")

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_property_never_raises(self, line: bytes) -> None:
        result = parse_command(line)
        if isinstance(result, Command):
            self.assertTrue(3 <= len(result.verb) <= 4 and result.verb.isupper())
        else:
            self.assertIn(result.code, (500, 501))


class ReplyTextTests(SynchronousTestCase):
    def test_sanitize(self) -> None:
        cases = [
            ("plain", "plain"),
            ("a\r\n257 fake", "a??257 fake"),
            ("nul\0", "nul?"),
            ("\n", "?"),
            ("caf\u00e9", "caf\u00e9"),
        ]
        for text, expected in cases:
            with self.subTest(text=text):
                self.assertEqual(sanitize_reply_text(text), expected)

    def test_quote_path(self) -> None:
        cases = [
            ("/", '"/"'),
            ("/a b", '"/a b"'),
            ('/say "hi"', '"/say ""hi"""'),
            ("/x\r\n226 done", '"/x??226 done"'),
        ]
        for path, expected in cases:
            with self.subTest(path=path):
                self.assertEqual(quote_path(path), expected)

    def test_quote_path_round_trips_through_ftplib(self) -> None:
        import ftplib

        for path in ["/", '/say "hi"', '/"', '/""x', "/caf\u00e9 dir"]:
            with self.subTest(path=path):
                reply = f"257 {quote_path(path)} created"
                self.assertEqual(ftplib.parse257(reply), path)
