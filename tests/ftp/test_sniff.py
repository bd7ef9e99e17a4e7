"""What the first bytes on a port look like."""

from twisted.trial.unittest import SynchronousTestCase

from securetransport.ftp.sniff import describe_first_bytes


class DescribeFirstBytesTests(SynchronousTestCase):
    def test_table(self) -> None:
        cases = [
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "tls"),
            (b"\x16\x03\x03", "tls"),
            (b"USER alice\r\n", "ftp"),
            (b"AUTH TLS\r\n", "ftp"),
            (b"feat\r\n", "ftp"),
            (b"NOOP\n", "ftp"),
            (b"GET / HTTP/1.1\r\n", "ftp"),  # looks like a command line: still not TLS
            (b"\x00\x01\x02", "other"),
            (b"", "other"),
            (b"\x16", "other"),
            (b"SSH-2.0-OpenSSH_9.2\r\n", "other"),
        ]
        for data, expected in cases:
            self.assertEqual(describe_first_bytes(data), expected, data)
