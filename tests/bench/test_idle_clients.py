"""bench/idle_clients.py: FTP reply framing and the loopback source addresses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.idle_clients import (
    ReplyError,
    parse_sources,
    reply_code,
    reply_complete,
    source_addresses,
)


class ReplyFramingTests(SynchronousTestCase):
    def test_single_line(self) -> None:
        self.assertTrue(reply_complete([b"230 Logged in"]))
        self.assertEqual(reply_code([b"230 Logged in"]), 230)

    def test_multi_line_needs_closing_line_with_same_code(self) -> None:
        lines = [b"230-Welcome", b"230 still text"]
        self.assertFalse(reply_complete(lines[:1]))
        self.assertFalse(reply_complete([b"230-Welcome", b" 230 indented", b"231 other code"]))
        self.assertTrue(reply_complete(lines))

    def test_empty_is_incomplete(self) -> None:
        self.assertFalse(reply_complete([]))

    def test_not_a_reply(self) -> None:
        self.assertRaises(ReplyError, reply_code, [b"hello"])
        self.assertRaises(ReplyError, reply_code, [])


class SourceAddressTests(SynchronousTestCase):
    def test_range(self) -> None:
        self.assertEqual(source_addresses(2, 4), ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        self.assertEqual(len(source_addresses(*parse_sources("2-20"))), 19)

    def test_bad_ranges(self) -> None:
        for text in ("20-2", "0-5", "2-255", "two", "2"):
            with self.assertRaises(ValueError, msg=text):
                parse_sources(text)
