"""Tests for securetransport.ftp.addresses: PORT/EPRT/PASV/EPSV and the bounce rule."""

from __future__ import annotations

import re
from ipaddress import IPv6Address

from twisted.trial.unittest import SynchronousTestCase

from securetransport.ftp.addresses import (
    EPRT_REFUSED,
    PORT_REFUSED,
    PROTOCOL_NOT_SUPPORTED,
    AddressError,
    check_active_target,
    format_epsv_reply,
    format_pasv_reply,
    network_protocol,
    parse_eprt,
    parse_epsv_argument,
    parse_port,
)


class AddressErrorTests(SynchronousTestCase):
    def test_is_value_error_with_reply(self) -> None:
        error = AddressError(501, "bad")
        self.assertIsInstance(error, ValueError)
        self.assertEqual((error.code, error.text, str(error)), (501, "bad", "501 bad"))


class ParsePortTests(SynchronousTestCase):
    def test_good(self) -> None:
        cases = [
            ("127,0,0,1,4,1", ("127.0.0.1", 1025)),
            ("192,168,1,20,255,255", ("192.168.1.20", 65535)),
            ("10,0,0,1,0,21", ("10.0.0.1", 21)),  # syntax is fine; the bounce rule refuses it
            ("127,000,000,001,004,001", ("127.0.0.1", 1025)),
            (" 127,0,0,1,4,1 ", ("127.0.0.1", 1025)),
        ]
        for argument, expected in cases:
            with self.subTest(argument=argument):
                self.assertEqual(parse_port(argument), expected)

    def test_bad(self) -> None:
        for argument in [
            "",
            "127,0,0,1,4",
            "127,0,0,1,4,1,1",
            "127,0,0,256,4,1",
            "127,0,0,1,256,1",
            "127,0,0,1,0,0",
            "127,0,0,-1,4,1",
            "127,0,0,+1,4,1",
            "127,0,0, 1,4,1",
            "127,0,0,1,4,1,",
            "127.0.0.1,4,1",
            "a,b,c,d,e,f",
            "127,0,0,1,0x4,1",
            "127,0,0,1,\u0664,1",  # an Arabic-Indic digit
            "1270,0,0,1,4,1",
            "|1|127.0.0.1|1025|",
        ]:
            with self.subTest(argument=argument):
                with self.assertRaises(AddressError) as caught:
                    parse_port(argument)
                self.assertEqual(caught.exception.code, 501)


class ParseEprtTests(SynchronousTestCase):
    def test_good(self) -> None:
        cases = [
            ("|1|132.235.1.2|6275|", ("132.235.1.2", 6275)),
            ("|2|1080::8:800:200C:417A|5282|", ("1080::8:800:200c:417a", 5282)),
            ("|2|::1|5282|", ("::1", 5282)),
            # Written the way this Python writes IPv6 (3.13 changed the mapped form).
            ("|2|::ffff:127.0.0.1|2000|", (str(IPv6Address("::ffff:127.0.0.1")), 2000)),
            ("!1!127.0.0.1!1025!", ("127.0.0.1", 1025)),
            ("~2~::1~65535~", ("::1", 65535)),
            ("#1#10.0.0.1#1#", ("10.0.0.1", 1)),
            (" |1|127.0.0.1|1025| ", ("127.0.0.1", 1025)),
        ]
        for argument, expected in cases:
            with self.subTest(argument=argument):
                self.assertEqual(parse_eprt(argument), expected)

    def test_bad_syntax(self) -> None:
        for argument in [
            "",
            "|1|127.0.0.1|1025",
            "1|127.0.0.1|1025|",
            "|1|127.0.0.1|1025|x",
            "|1|127.0.0.1||",
            "|1|127.0.0.1|0|",
            "|1|127.0.0.1|65536|",
            "|1|127.0.0.1|-1|",
            "|1|127.0.0.1|+80|",
            "|1|127.0.0.1|1025|1|",
            "|1|::1|1025|",  # protocol and address disagree
            "|2|127.0.0.1|1025|",
            "|1|127.000.0.1|1025|",
            "|1|localhost|1025|",
            "|1||1025|",
            "|2|fe80::1%eth0|1025|",
            "||127.0.0.1|1025|",
            "|x|127.0.0.1|1025|",
            "\u00e91\u00e9127.0.0.1\u00e91025\u00e9",  # delimiter outside 33-126
            "\x7f1\x7f127.0.0.1\x7f1025\x7f",
            "11127.0.0.111025",
        ]:
            with self.subTest(argument=argument):
                with self.assertRaises(AddressError) as caught:
                    parse_eprt(argument)
                self.assertEqual(caught.exception.code, 501)

    def test_unsupported_protocol(self) -> None:
        for argument in ["|3|127.0.0.1|1025|", "|0|127.0.0.1|1025|", "|99|x|1|"]:
            with self.subTest(argument=argument):
                with self.assertRaises(AddressError) as caught:
                    parse_eprt(argument)
                self.assertEqual(caught.exception.code, 522)
                self.assertEqual(caught.exception.text, PROTOCOL_NOT_SUPPORTED)
        self.assertEqual(PROTOCOL_NOT_SUPPORTED, "Network protocol not supported, use (1,2)")


class EpsvArgumentTests(SynchronousTestCase):
    def test_good(self) -> None:
        cases = [(None, None), ("", None), ("ALL", "ALL"), ("all", "ALL"), ("1", 1), ("2", 2)]
        for argument, expected in cases:
            with self.subTest(argument=argument):
                self.assertEqual(parse_epsv_argument(argument), expected)

    def test_bad(self) -> None:
        cases = [("3", 522), ("0", 522), ("ALLX", 501), ("x", 501), ("1 2", 501), ("-1", 501)]
        for argument, code in cases:
            with self.subTest(argument=argument):
                with self.assertRaises(AddressError) as caught:
                    parse_epsv_argument(argument)
                self.assertEqual(caught.exception.code, code)


class PassiveReplyTests(SynchronousTestCase):
    def test_pasv(self) -> None:
        cases = [
            ("127.0.0.1", 61000, "Entering Passive Mode (127,0,0,1,238,72)."),
            ("::ffff:127.0.0.1", 61000, "Entering Passive Mode (127,0,0,1,238,72)."),
            ("192.0.2.7", 1, "Entering Passive Mode (192,0,2,7,0,1)."),
            ("10.1.2.3", 65535, "Entering Passive Mode (10,1,2,3,255,255)."),
        ]
        for host, port, expected in cases:
            with self.subTest(host=host, port=port):
                text = format_pasv_reply(host, port)
                self.assertEqual(text, expected)
                # What ftplib.parse227 expects, and the port it computes.
                numbers = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
                assert numbers is not None
                self.assertEqual(int(numbers.group(5)) * 256 + int(numbers.group(6)), port)

    def test_pasv_round_trip_through_parse_port(self) -> None:
        text = format_pasv_reply("172.16.5.4", 61234)
        inner = text[text.index("(") + 1 : text.index(")")]
        self.assertEqual(parse_port(inner), ("172.16.5.4", 61234))

    def test_pasv_refused(self) -> None:
        for host, port in [("::1", 61000), ("2001:db8::1", 61000), ("localhost", 61000)]:
            with self.subTest(host=host):
                with self.assertRaises(AddressError) as caught:
                    format_pasv_reply(host, port)
                self.assertEqual(caught.exception.code, 425)
        for port in (0, 65536):
            with self.assertRaises(AddressError):
                format_pasv_reply("127.0.0.1", port)

    def test_epsv(self) -> None:
        self.assertEqual(format_epsv_reply(61000), "Entering Extended Passive Mode (|||61000|)")
        with self.assertRaises(AddressError):
            format_epsv_reply(0)

    def test_epsv_parsed_like_ftplib(self) -> None:
        import ftplib

        self.assertEqual(ftplib.parse229("229 " + format_epsv_reply(61001), ("::1", 0))[1], 61001)

    def test_network_protocol(self) -> None:
        cases = [("127.0.0.1", 1), ("::ffff:127.0.0.1", 1), ("::1", 2), ("fe80::1%eth0", 2)]
        for host, expected in cases:
            with self.subTest(host=host):
                self.assertEqual(network_protocol(host), expected)


class BounceRuleTests(SynchronousTestCase):
    def test_allowed(self) -> None:
        cases = [
            ("127.0.0.1", 1024, "127.0.0.1"),
            ("127.0.0.1", 65535, "127.0.0.1"),
            ("127.0.0.1", 40000, "::ffff:127.0.0.1"),
            ("::ffff:127.0.0.1", 40000, "127.0.0.1"),
            ("::1", 40000, "::1"),
            ("0:0:0:0:0:0:0:1", 40000, "::1"),
            ("fe80::1", 40000, "fe80::1%eth0"),
        ]
        for target, port, peer in cases:
            for command in ("PORT", "EPRT"):
                with self.subTest(target=target, port=port, peer=peer, command=command):
                    self.assertIsNone(check_active_target(target, port, peer, command))

    def test_refused(self) -> None:
        cases = [
            ("127.0.0.2", 40000, "127.0.0.1"),
            ("10.0.0.1", 40000, "127.0.0.1"),
            ("127.0.0.1", 40000, "::1"),
            ("::2", 40000, "::1"),
            ("127.0.0.1", 1023, "127.0.0.1"),
            ("127.0.0.1", 21, "127.0.0.1"),
            ("127.0.0.1", 0, "127.0.0.1"),
            ("127.0.0.1", 65536, "127.0.0.1"),
            ("not an address", 40000, "127.0.0.1"),
            ("127.0.0.1", 40000, "not an address"),
        ]
        for target, port, peer in cases:
            for command, code in (("PORT", 504), ("EPRT", 501), ("eprt", 501)):
                with self.subTest(target=target, port=port, peer=peer, command=command):
                    refusal = check_active_target(target, port, peer, command)
                    assert refusal is not None
                    self.assertEqual(refusal.code, code)
        self.assertEqual((PORT_REFUSED, EPRT_REFUSED), (504, 501))

    def test_default_command_is_port(self) -> None:
        refusal = check_active_target("10.0.0.1", 40000, "127.0.0.1")
        assert refusal is not None
        self.assertEqual(refusal.code, 504)
