"""The hardening tools' pure parts: percentiles and the fuzz grammar's safety properties."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from hardening.clients import client_hello
from hardening.grammar import command_line, tls_payload
from hardening.stats import percentile, summary_ms
from securetransport.ftp import addresses, parser

SINK = ("127.0.0.101", 45678)


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        values = [i / 100 for i in range(100, 0, -1)]
        self.assertEqual(percentile(values, 0.50), 0.50)
        self.assertEqual(percentile(values, 0.99), 0.99)
        self.assertEqual(percentile(values, 1.0), 1.0)
        self.assertEqual(percentile([7.0], 0.99), 7.0)
        self.assertEqual(percentile([], 0.5), 0.0)

    def test_summary_in_milliseconds(self) -> None:
        self.assertEqual(
            summary_ms([0.001, 0.002, 0.010]),
            {"count": 3, "p50_ms": 2.0, "p99_ms": 10.0, "worst_ms": 10.0},
        )


class GrammarTests(SynchronousTestCase):
    def lines(self, count: int, seed: int = 7) -> list[bytes]:
        rng = random.Random(seed)
        return [command_line(rng, SINK) for _ in range(count)]

    def test_same_seed_same_lines(self) -> None:
        self.assertEqual(self.lines(500), self.lines(500))
        self.assertNotEqual(self.lines(500), self.lines(500, seed=8))

    def test_every_item_ends_a_line(self) -> None:
        for line in self.lines(5000):
            self.assertTrue(line.endswith(b"\n"), line[-20:])

    def test_the_mix_has_every_kind_of_input(self) -> None:
        lines = self.lines(20000)
        self.assertTrue(any(len(line) > parser.MAX_LINE for line in lines), "overlong")
        self.assertTrue(any(b"\xff" in line for line in lines), "Telnet IAC")
        self.assertTrue(any(b"\x00" in line for line in lines), "NUL")
        self.assertTrue(any(line.endswith(b"\n") and not line.endswith(b"\r\n") for line in lines))
        self.assertTrue(any(b"\r" in line.rstrip(b"\r\n") for line in lines), "bare CR")
        undecodable = 0
        for line in lines:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                undecodable += 1
        self.assertGreater(undecodable, 100)
        commands = [parser.parse_command(line) for line in lines]
        verbs = {c.verb for c in commands if isinstance(c, parser.Command)}
        self.assertGreater(len(verbs & {"RETR", "STOR", "PORT", "EPRT", "CWD", "MLST"}), 5)

    def test_active_mode_only_aims_at_the_sink_or_is_refused(self) -> None:
        """The fuzzer must never point the server at another local service."""
        seen_sink = 0
        for line in self.lines(50000, seed=3):
            command = parser.parse_command(line)
            if not isinstance(command, parser.Command) or command.verb not in ("PORT", "EPRT"):
                continue
            try:
                if command.verb == "PORT":
                    host, port = addresses.parse_port(command.argument or "")
                else:
                    host, port = addresses.parse_eprt(command.argument or "")
            except addresses.AddressError:
                continue  # refused as malformed
            if (host, port) == SINK:
                seen_sink += 1
                continue
            refused = addresses.check_active_target(host, port, SINK[0], command.verb)
            self.assertIsNotNone(refused, (line, host, port))
        self.assertGreater(seen_sink, 100)

    def test_tls_payloads(self) -> None:
        hello = client_hello()
        rng = random.Random(1)
        kinds = set()
        for _ in range(2000):
            kind, payload = tls_payload(rng, hello)
            kinds.add(kind)
            self.assertTrue(payload, kind)
        self.assertGreaterEqual(len(kinds), 15)
