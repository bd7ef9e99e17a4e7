"""Tests for securetransport.workers: the pure helpers and what the supervisor hands a worker.
(The processes themselves are tested end to end in tests/e2e/test_workers.py.)"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from securetransport.config import load_config
from securetransport.pki import init_pki
from securetransport.tls.material import load_tls, tls_material, tls_runtime
from securetransport.workers import (
    RESTART_DELAY,
    RESTARTS_PER_MINUTE,
    WorkerAuditLog,
    WorkerBoot,
    accept_now,
    passive_slice,
    restart_delay,
)


class PassiveSliceTests(SynchronousTestCase):
    def test_even_split(self) -> None:
        self.assertEqual(passive_slice(61000, 61999, 0, 2), (61000, 61499))
        self.assertEqual(passive_slice(61000, 61999, 1, 2), (61500, 61999))

    def test_slices_cover_the_range_once(self) -> None:
        for first, last, count in ((61000, 61009, 3), (50000, 50100, 7), (2000, 2003, 4)):
            ports: list[int] = []
            for index in range(count):
                start, end = passive_slice(first, last, index, count)
                self.assertLessEqual(start, end)
                ports.extend(range(start, end + 1))
            self.assertEqual(ports, list(range(first, last + 1)), (first, last, count))

    def test_fewer_ports_than_workers_share_the_range(self) -> None:
        self.assertEqual(passive_slice(61000, 61001, 2, 3), (61000, 61001))


class AcceptNowTests(SynchronousTestCase):
    def test_least_sessions_first_then_fewest_accepted(self) -> None:
        cases: list[tuple[tuple[int, int], list[tuple[int, int]], bool]] = [
            ((0, 0), [], True),  # alone
            ((0, 4), [(0, 4)], True),  # equal: whoever is first
            ((3, 9), [(3, 9), (5, 0)], True),
            ((1, 0), [(0, 7)], False),  # another worker holds fewer: leave it the connection
            ((4, 1), [(9, 0), (3, 50)], False),
            ((0, 5), [(0, 4)], False),  # as many open, but it accepted fewer: its turn
            ((0, 4), [(0, 5), (1, 0)], True),
        ]
        for mine, others, expected in cases:
            self.assertEqual(accept_now(mine, others), expected, (mine, others))


class RestartDelayTests(SynchronousTestCase):
    def test_bounded_restarts(self) -> None:
        self.assertEqual(restart_delay([], 1000.0), RESTART_DELAY)
        recent = [990.0 + i for i in range(RESTARTS_PER_MINUTE - 1)]
        self.assertEqual(restart_delay(recent, 1000.0), RESTART_DELAY)
        full = [950.0 + i for i in range(RESTARTS_PER_MINUTE)]
        # The oldest of the last 5 was at 950: the next may start at 1010.
        self.assertEqual(restart_delay(full, 1000.0), 10.0)
        self.assertEqual(restart_delay(full, 1100.0), RESTART_DELAY)


class TLSMaterialTests(SynchronousTestCase):
    def test_round_trip_without_files(self) -> None:
        root = Path(self.mktemp()).absolute()
        init_pki(root / "pki", ["alice"])
        path = root / "st.toml"
        path.write_text(
            '[tls]\ncertificate = "pki/server.crt"\nprivate_key = "pki/server.key"\n'
            'client_ca = "pki/ca.crt"\nmin_version = "TLSv1.3"\n'
        )
        config = load_config(path)
        original = load_tls(config)
        assert original is not None
        boot = pickle.loads(pickle.dumps(WorkerBoot(config, tls_material(original))))
        self.assertEqual(boot.config, config)
        for name in ("server.crt", "server.key", "ca.crt"):  # the worker reads no file
            os.unlink(root / "pki" / name)
        rebuilt = tls_runtime(boot.tls)
        assert rebuilt is not None
        before, after = original.contexts.credentials, rebuilt.contexts.credentials
        self.assertEqual(after.chain, before.chain)
        self.assertEqual(after.client_cas, before.client_cas)
        self.assertEqual((after.min_version, after.ciphers), ("TLSv1.3", before.ciphers))
        der = serialization.Encoding.DER
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(
            after.private_key.public_key().public_bytes(der, public),
            before.private_key.public_key().public_bytes(der, public),
        )
        self.assertEqual(rebuilt.trust.cas, original.trust.cas)
        self.assertIsNotNone(rebuilt.contexts.new_session_context())

    def test_no_tls(self) -> None:
        self.assertIsNone(tls_material(None))
        self.assertIsNone(tls_runtime(None))


class WorkerAuditLogTests(SynchronousTestCase):
    def test_session_start_names_the_worker(self) -> None:
        path = Path(self.mktemp()) / "audit.jsonl"
        audit = WorkerAuditLog(path, 3)
        audit.event("session-start", session="s", client="192.0.2.1")
        audit.event("session-end", session="s", user=None)
        audit.close()
        start, end = (json.loads(line) for line in path.read_text().splitlines())
        self.assertEqual((start["worker"], start["pid"]), (3, os.getpid()))
        self.assertEqual(start["client"], "192.0.2.1")
        self.assertNotIn("worker", end)
