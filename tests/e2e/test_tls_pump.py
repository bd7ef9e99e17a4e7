"""The protected-data fast path (ftp/tls_pump.py) end to end, TLS 1.2 and 1.3.

Each test checks that the transfer really went through a pool thread with OpenSSL on
the socket (`TLSPump.handed_off`), and what the client and the disk got (SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from securetransport.ftp.tls_pump import TLSPump
from tests.e2e.ftps_clients import ftps_login, reply_code
from tests.e2e.harness import (
    PASSWORD,
    LiveServer,
    curl_base,
    curl_url,
    in_thread,
    random_file,
    run_tool,
    sha256_file,
)
from tests.e2e.pump_scenarios import (
    abor_during_download,
    abor_during_upload,
    prepare_abor,
    stalled_download,
    truncated_upload,
)
from tests.hardening.helpers import temporaries

BIG = 24 * 1024 * 1024 + 5  # several pump chunks, not a multiple of a record or a chunk
CURL_VERSION = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3"]}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FastPathTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.before = dict(TLSPump.handed_off)
        self.work = Path(self.mktemp()).absolute()
        self.work.mkdir()

    def handed_off(self, direction: str) -> int:
        return TLSPump.handed_off[direction] - self.before.get(direction, 0)

    @defer.inlineCallbacks
    def curl_both_ways(self, version: str, implicit: bool) -> Any:
        server = LiveServer(self).start()
        source = self.work / "source.bin"
        digest = random_file(source, BIG)
        base = curl_base(server, implicit=implicit) + CURL_VERSION[version]
        base += ["-u", f"alice:{PASSWORD}"]
        url = curl_url(server, "/up.bin", implicit=implicit)
        out, err, code = yield run_tool("curl", base + ["-T", str(source), url])
        self.assertEqual(code, 0, err)
        back = self.work / "back.bin"
        out, err, code = yield run_tool("curl", base + ["-o", str(back), url])
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256_file(server.home() / "up.bin"), digest)
        self.assertEqual(sha256_file(back), digest)
        self.assertEqual(self.handed_off("receive"), 1)
        self.assertEqual(self.handed_off("send"), 1)
        self.assertEqual(server.runtime.sendfile_active, 0)  # thread slots given back

    def test_curl_tls12_explicit(self) -> Any:
        return self.curl_both_ways("1.2", implicit=False)

    def test_curl_tls13_explicit(self) -> Any:
        return self.curl_both_ways("1.3", implicit=False)

    def test_curl_tls13_implicit(self) -> Any:
        return self.curl_both_ways("1.3", implicit=True)

    @defer.inlineCallbacks
    def rest_both_ways(self, version: str) -> Any:
        server = LiveServer(self).start()
        payload = os.urandom(BIG)
        (server.home() / "data.bin").write_bytes(payload)
        offset = 5 * 1024 * 1024 + 3
        cut = 7 * 1024 * 1024 + 1

        def session() -> list[Any]:
            ftp = ftps_login(server, version)
            tail = bytearray()
            ftp.retrbinary("RETR data.bin", tail.extend, rest=offset)
            first = ftp.storbinary("STOR up.bin", io.BytesIO(payload[:cut]))
            rest = ftp.storbinary("STOR up.bin", io.BytesIO(payload[cut:]), rest=cut)
            ftp.quit()
            return [sha256(bytes(tail)), first, rest]

        tail, first, rest = yield in_thread(session)
        self.assertEqual(tail, sha256(payload[offset:]))
        self.assertEqual([first, rest], ["226 Transfer complete"] * 2)
        self.assertEqual(sha256_file(server.home() / "up.bin"), sha256(payload))
        self.assertEqual(self.handed_off("send"), 1)
        self.assertEqual(self.handed_off("receive"), 2)

    def test_rest_tls12(self) -> Any:
        return self.rest_both_ways("1.2")

    def test_rest_tls13(self) -> Any:
        return self.rest_both_ways("1.3")

    @defer.inlineCallbacks
    def abor_download(self, version: str) -> Any:
        server = LiveServer(self).start()
        prepare_abor(server.home())
        replies = yield in_thread(lambda: abor_during_download(ftps_login(server, version)))
        self.assertEqual(replies, ["426226", b"after ABOR", "200"])
        self.assertEqual(self.handed_off("send"), 1)  # small.txt: below PUMP_MIN_BYTES

    def test_abor_during_download_tls12(self) -> Any:
        return self.abor_download("1.2")

    def test_abor_during_download_tls13(self) -> Any:
        return self.abor_download("1.3")

    @defer.inlineCallbacks
    def abor_upload(self, version: str) -> Any:
        server = LiveServer(self).start()
        home = server.home()
        (home / "keep.bin").write_bytes(b"previous version")
        replies = yield in_thread(lambda: abor_during_upload(ftps_login(server, version)))
        self.assertEqual(replies, ["426226", "226 Transfer complete", "200"])
        self.assertEqual((home / "keep.bin").read_bytes(), b"previous version")
        self.assertEqual((home / "after.txt").read_bytes(), b"after ABOR")
        self.assertEqual(temporaries(home), [])
        # The aborted upload went to the thread; after.txt may be complete before its hand-off.
        self.assertIn(self.handed_off("receive"), (1, 2))

    def test_abor_during_upload_tls12(self) -> Any:
        return self.abor_upload("1.2")

    def test_abor_during_upload_tls13(self) -> Any:
        return self.abor_upload("1.3")

    @defer.inlineCallbacks
    def truncated_upload(self, version: str) -> Any:
        server = LiveServer(self).start()
        home = server.home()
        (home / "keep.bin").write_bytes(b"previous version")
        reply, clean = yield in_thread(lambda: truncated_upload(ftps_login(server, version)))
        self.assertEqual(reply_code(reply), "426")
        self.assertIn("close_notify", reply)
        self.assertEqual(clean, "226 Transfer complete")
        self.assertEqual((home / "keep.bin").read_bytes(), b"previous version")
        self.assertEqual((home / "clean.bin").read_bytes(), b"y" * 3_000_000)
        self.assertGreaterEqual(self.handed_off("receive"), 1)

    def test_truncated_upload_tls12(self) -> Any:
        return self.truncated_upload("1.2")

    def test_truncated_upload_tls13(self) -> Any:
        return self.truncated_upload("1.3")

    @defer.inlineCallbacks
    def stalled_download(self, version: str) -> Any:
        server = LiveServer(self, extra_server="data_timeout = 1").start()
        with open(server.home() / "big.bin", "wb") as handle:
            handle.truncate(256 * 1024 * 1024)

        reply, noop = yield in_thread(lambda: stalled_download(ftps_login(server, version)))
        self.assertEqual(reply_code(reply), "426")
        self.assertIn("timed out", reply)
        self.assertEqual(noop[:3], "200")
        self.assertEqual(self.handed_off("send"), 1)
        self.assertEqual(server.runtime.sendfile_active, 0)

    def test_data_timeout_tls12(self) -> Any:
        return self.stalled_download("1.2")

    def test_data_timeout_tls13(self) -> Any:
        return self.stalled_download("1.3")
