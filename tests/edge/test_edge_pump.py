"""Protected data through an edge with the client's TLS pumped in a thread at the edge
(tls_pump.TLSQueueSender downloads, TLSFileReceiver uploads), TLS 1.2 and 1.3: SHA-256
both ways, ABOR of a download, an upload cut without close_notify (426)."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from securetransport.ftp.tls_pump import TLSPump
from tests.e2e.harness import in_thread
from tests.e2e.pump_scenarios import (
    abor_during_download,
    abor_during_upload,
    prepare_abor,
    stalled_download,
    truncated_upload,
)
from tests.edge.harness import EdgeSetup
from tests.hardening.helpers import temporaries

BIG = 24 * 1024 * 1024 + 5  # several queue limits, not a multiple of a record or frame


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EdgePumpTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.before = dict(TLSPump.handed_off)
        self.setup = EdgeSetup(self)
        yield self.setup.start()

    def handed_off(self, direction: str) -> int:
        """Hand-offs in this process: the edge's (relayed data on the server is not TLS)."""
        return TLSPump.handed_off[direction] - self.before.get(direction, 0)

    @defer.inlineCallbacks
    def both_ways(self, version: str) -> Any:
        payload = os.urandom(BIG)

        def session() -> list[str]:
            ftp = self.setup.ftps(version=version)
            stored = ftp.storbinary("STOR up.bin", io.BytesIO(payload))
            back = bytearray()
            retrieved = ftp.retrbinary("RETR up.bin", back.extend)
            listing = ftp.nlst()
            ftp.quit()
            return [stored, retrieved, sha256(bytes(back)), listing]

        stored, retrieved, digest, listing = yield in_thread(session)
        self.assertEqual(listing, ["up.bin"])
        self.assertEqual([stored, retrieved], ["226 Transfer complete"] * 2)
        self.assertEqual(digest, sha256(payload))
        on_disk = (self.setup.server.home() / "up.bin").read_bytes()
        self.assertEqual(sha256(on_disk), sha256(payload))
        self.assertEqual(self.handed_off("receive"), 1)
        self.assertEqual(self.handed_off("send"), 1)  # the listing: below PUMP_AFTER

    def test_both_ways_tls12(self) -> Any:
        return self.both_ways("1.2")

    def test_both_ways_tls13(self) -> Any:
        return self.both_ways("1.3")

    @defer.inlineCallbacks
    def abor_download(self, version: str) -> Any:
        prepare_abor(self.setup.server.home())
        replies = yield in_thread(lambda: abor_during_download(self.setup.ftps(version=version)))
        self.assertEqual(replies, ["426226", b"after ABOR", "200"])
        self.assertEqual(self.handed_off("send"), 1)  # small.txt: below PUMP_AFTER

    def test_abor_during_download_tls12(self) -> Any:
        return self.abor_download("1.2")

    def test_abor_during_download_tls13(self) -> Any:
        return self.abor_download("1.3")

    @defer.inlineCallbacks
    def abor_upload(self, version: str) -> Any:
        home = self.setup.server.home()
        (home / "keep.bin").write_bytes(b"previous version")
        replies = yield in_thread(lambda: abor_during_upload(self.setup.ftps(version=version)))
        self.assertEqual(replies, ["426226", "226 Transfer complete", "200"])
        self.assertEqual((home / "keep.bin").read_bytes(), b"previous version")
        self.assertEqual((home / "after.txt").read_bytes(), b"after ABOR")
        self.assertEqual(temporaries(home), [])
        self.assertEqual(self.handed_off("receive"), 1)  # after.txt: below PUMP_AFTER

    def test_abor_during_upload_tls12(self) -> Any:
        return self.abor_upload("1.2")

    def test_abor_during_upload_tls13(self) -> Any:
        return self.abor_upload("1.3")

    @defer.inlineCallbacks
    def truncated_upload(self, version: str) -> Any:
        home = self.setup.server.home()
        (home / "keep.bin").write_bytes(b"previous version")
        reply, clean = yield in_thread(lambda: truncated_upload(self.setup.ftps(version=version)))
        self.assertTrue(reply.startswith("426"), reply)
        self.assertIn("close_notify", reply)
        self.assertEqual(clean, "226 Transfer complete")
        self.assertEqual((home / "keep.bin").read_bytes(), b"previous version")
        self.assertEqual((home / "clean.bin").read_bytes(), b"y" * 3_000_000)
        self.assertEqual(self.handed_off("receive"), 2)

    def test_truncated_upload_tls12(self) -> Any:
        return self.truncated_upload("1.2")

    def test_truncated_upload_tls13(self) -> Any:
        return self.truncated_upload("1.3")


class EdgeStalledDownloadTests(TestCase):
    """data_timeout through an edge: a client that stops reading a protected download gets
    426 (the server's watchdog aborts the relayed connection), and the session goes on."""

    timeout = 60

    @defer.inlineCallbacks
    def stalled(self, version: str) -> Any:
        setup = EdgeSetup(self, extra_server="data_timeout = 1")
        yield setup.start()
        with open(setup.server.home() / "big.bin", "wb") as handle:
            handle.truncate(256 * 1024 * 1024)

        reply, noop = yield in_thread(lambda: stalled_download(setup.ftps(version=version)))
        self.assertTrue(reply.startswith("426"), reply)
        self.assertIn("timed out", reply)
        self.assertEqual(noop[:3], "200")

    def test_data_timeout_tls12(self) -> Any:
        return self.stalled("1.2")

    def test_data_timeout_tls13(self) -> Any:
        return self.stalled("1.3")
