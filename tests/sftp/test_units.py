"""Unit tests for SFTP's pure parts: the SSH policy, keys in the user store (and the
schema migration), the [ssh] config, host key loading, the algorithm lists, and the
ISSHPrivateKey checker's verdicts."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch import error as conch_error
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS
from twisted.cred.error import UnauthorizedLogin
from twisted.trial.unittest import SynchronousTestCase

from securetransport.config import ClassConfig, ConfigError, config_from_dict
from securetransport.policy import decide_ssh, judge_publickey
from securetransport.sftp import auth as sftp_auth
from securetransport.sftp import server as sftp_server
from securetransport.sftp.keys import write_ed25519_pair
from securetransport.userstore import (
    Account,
    AccountSnapshot,
    SQLiteUserStore,
    UserStoreError,
    normalize_ssh_fingerprint,
    ssh_key_fingerprint,
)
from tests.fakes import MemoryUserStore, SyncVerificationPool

CLASSES = (
    ClassConfig(name="keys", users=("alice", "k-*"), login=("publickey",)),
    ClassConfig(name="admins", groups=("admins",), login=("publickey+password",)),
    ClassConfig(name="two", users=("carol",), login=("publickey+password", "password")),
    ClassConfig(name="ftp-only", users=("frank",), login=("certificate",)),
    ClassConfig(name="everyone", login=("password", "publickey")),
)


def _key_line(comment: str = "c") -> tuple[str, ed25519.Ed25519PrivateKey]:
    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{public.decode()} {comment}", private


class SSHPolicyTests(SynchronousTestCase):
    def decide(self, name: str, groups: tuple[str, ...] = (), known: bool = True) -> Any:
        account = Account(name=name, groups=groups) if known else None
        return decide_ssh(name=name, account=account, address="192.0.2.1", classes=CLASSES)

    def test_methods_offered_by_class(self) -> None:
        table = {
            ("alice", ()): ("keys", ("publickey",), ("publickey",)),
            ("bob", ("admins",)): ("admins", ("publickey+password",), ("publickey",)),
            ("carol", ()): ("two", ("publickey+password", "password"), ("publickey", "password")),
            ("frank", ()): ("ftp-only", (), ()),
            ("zed", ()): ("everyone", ("publickey", "password"), ("publickey", "password")),
        }
        for (name, groups), (klass, methods, offered) in table.items():
            decision = self.decide(name, groups)
            self.assertEqual(
                (decision.klass.name, decision.methods, decision.offered),
                (klass, methods, offered),
                name,
            )

    def test_partial_success_only_without_publickey(self) -> None:
        self.assertTrue(self.decide("bob", ("admins",)).key_then_password)
        self.assertFalse(self.decide("alice").key_then_password)
        self.assertTrue(self.decide("alice").key_completes)
        self.assertFalse(self.decide("zed").key_then_password)

    def test_unknown_and_disabled_names_like_known_ones_without_groups(self) -> None:
        for name in ("alice", "k-unknown", "zed"):
            known = self.decide(name)
            unknown = self.decide(name, known=False)
            self.assertEqual((known.klass, known.offered), (unknown.klass, unknown.offered))
        disabled = decide_ssh(
            name="bob",
            account=Account(name="bob", groups=("admins",), enabled=False),
            address="192.0.2.1",
            classes=CLASSES,
        )
        self.assertEqual(disabled.klass.name, "everyone")

    def test_no_class(self) -> None:
        decision = decide_ssh(name="x", account=None, address="192.0.2.1", classes=CLASSES[:1])
        self.assertEqual((decision.klass, decision.offered), (None, ()))

    def test_judge_publickey(self) -> None:
        line, _ = _key_line()
        fingerprint = ssh_key_fingerprint(line)
        account = Account(name="alice", ssh_keys=(line,))
        decision = decide_ssh(name="alice", account=account, address="::1", classes=CLASSES)
        self.assertEqual(
            judge_publickey(decision, account, fingerprint, "ssh-ed25519"), (True, None)
        )
        other, _ = _key_line()
        accepted, reason = judge_publickey(
            decision, account, ssh_key_fingerprint(other), "ssh-ed25519"
        )
        self.assertEqual((accepted, reason), (False, "key not registered on the account"))
        frank = Account(name="frank", ssh_keys=(line,))
        decision = decide_ssh(name="frank", account=frank, address="::1", classes=CLASSES)
        self.assertFalse(judge_publickey(decision, frank, fingerprint, "ssh-ed25519")[0])


class KeyStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-sshkeys-"))

    def test_keys_round_trip_and_fingerprint_matches_openssh_form(self) -> None:
        line, private = _key_line("alice@laptop")
        store = SQLiteUserStore(self.folder / "u.sqlite3")
        self.addCleanup(store.close)
        store.add(Account(name="alice", ssh_keys=(line, line)))
        account = store.get("alice")
        assert account is not None
        self.assertEqual(account.ssh_keys, (line,))
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        blob = NS(b"ssh-ed25519") + NS(raw)
        expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        self.assertEqual(ssh_key_fingerprint(line), expected)
        self.assertEqual(normalize_ssh_fingerprint(expected[7:] + "="), expected)
        store.remove("alice")
        with sqlite3.connect(self.folder / "u.sqlite3") as conn:
            self.assertEqual(conn.execute("SELECT COUNT(*) FROM ssh_keys").fetchone(), (0,))

    def test_bad_key_refused(self) -> None:
        store = SQLiteUserStore(self.folder / "u.sqlite3")
        self.addCleanup(store.close)
        for bad in (
            "ssh-ed25519",
            "ssh-ed25519 !!!",
            "ssh-rsa " + base64.b64encode(NS(b"ssh-ed25519")).decode(),
        ):
            self.assertRaises(UserStoreError, store.add, Account(name="x", ssh_keys=(bad,)))

    def test_version_1_file_is_migrated(self) -> None:
        path = self.folder / "old.sqlite3"
        with sqlite3.connect(path) as conn:
            conn.executescript(
                """
                CREATE TABLE accounts (name TEXT PRIMARY KEY, password_hash TEXT,
                    home TEXT NOT NULL DEFAULT '', read_only INTEGER NOT NULL DEFAULT 0,
                    enabled INTEGER NOT NULL DEFAULT 1);
                CREATE TABLE groups (name TEXT NOT NULL, grp TEXT NOT NULL,
                    PRIMARY KEY (name, grp));
                CREATE TABLE certificates (name TEXT NOT NULL, fingerprint TEXT NOT NULL,
                    PRIMARY KEY (name, fingerprint));
                INSERT INTO accounts (name) VALUES ('old');
                PRAGMA user_version = 1;
                """
            )
        store = SQLiteUserStore(path)
        self.addCleanup(store.close)
        old = store.get("old")
        assert old is not None
        self.assertEqual(old.ssh_keys, ())
        line, _ = _key_line()
        from dataclasses import replace

        store.update(replace(old, ssh_keys=(line,)))
        self.assertEqual(store.get("old").ssh_keys, (line,))  # type: ignore[union-attr]
        with sqlite3.connect(path) as conn:
            self.assertEqual(conn.execute("PRAGMA user_version").fetchone(), (2,))


class SSHConfigTests(SynchronousTestCase):
    def load(self, data: dict[str, Any]) -> Any:
        return config_from_dict(data, Path("/etc/st"))

    def test_sftp_listener_and_host_keys(self) -> None:
        config = self.load(
            {
                "listen": [{"port": 2222, "protocol": "sftp"}],
                "ssh": {"host_keys": ["keys/host"]},
                "class": [{"name": "k", "login": ["publickey", "publickey+password"]}],
            }
        )
        self.assertEqual(config.listen[0].protocol, "sftp")
        self.assertEqual(config.ssh.host_keys, (Path("/etc/st/keys/host"),))

    def test_sftp_listener_needs_host_keys(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.load({"listen": [{"port": 2222, "protocol": "sftp"}]})
        self.assertEqual(
            caught.exception.problems, ['listen[1].protocol: "sftp" needs ssh.host_keys']
        )

    def test_bad_values_name_the_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.load(
                {
                    "listen": [{"port": 2222, "protocol": "ssh"}],
                    "ssh": {"host_keys": [], "colour": 1},
                }
            )
        problems = caught.exception.problems
        self.assertTrue(any(p.startswith("listen[1].protocol:") for p in problems), problems)
        self.assertTrue(any(p.startswith("ssh.host_keys:") for p in problems), problems)
        self.assertTrue(any(p.startswith("ssh.colour: unknown key") for p in problems), problems)

    def test_publickey_allowed_with_client_certificate_off(self) -> None:
        config = self.load(
            {"class": [{"name": "k", "client_certificate": "off", "login": ["publickey"]}]}
        )
        self.assertEqual(config.classes[0].login, ("publickey",))


class HostKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="st-hostkeys-"))

    def test_loads_ed25519(self) -> None:
        write_ed25519_pair(self.folder / "host", "h")
        found = sftp_server.load_host_keys([self.folder / "host"])
        self.assertEqual(list(found), [b"ssh-ed25519"])

    def test_refusals(self) -> None:
        write_ed25519_pair(self.folder / "host", "h")
        (self.folder / "host").chmod(0o644)
        (self.folder / "pub").write_text((self.folder / "host.pub").read_text())
        (self.folder / "pub").chmod(0o600)
        (self.folder / "junk").write_text("junk")
        (self.folder / "junk").chmod(0o600)
        for name, words in (
            ("host", "readable by others"),
            ("pub", "public key"),
            ("junk", "not an OpenSSH private key"),
            ("missing", "No such file"),
        ):
            with self.assertRaises(sftp_server.HostKeyError) as caught:
                sftp_server.load_host_keys([self.folder / name])
            self.assertIn(words, str(caught.exception))


class AlgorithmTests(SynchronousTestCase):
    """No SHA-1 key exchange, no CBC/3DES, no SHA-1/MD5 MACs, no ssh-rsa/DSA signatures."""

    def test_lists(self) -> None:
        transport = sftp_server.SFTPServerTransport
        for kex in transport.supportedKeyExchanges:
            self.assertNotIn(b"sha1", kex)
        for cipher in transport.supportedCiphers:
            self.assertFalse(cipher.endswith(b"-cbc") or cipher.startswith(b"3des"), cipher)
        for mac in transport.supportedMACs:
            self.assertNotIn(mac, (b"hmac-sha1", b"hmac-md5"))
            self.assertTrue(mac.startswith(b"hmac-sha2"), mac)
        self.assertEqual(transport.supportedCompressions, [b"none"])
        self.assertNotIn(b"ssh-rsa", sftp_auth.USER_SIGNATURE_ALGORITHMS)
        self.assertNotIn(b"ssh-dss", sftp_auth.USER_SIGNATURE_ALGORITHMS)

    def test_rsa_host_key_never_signs_with_sha1(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="st-rsa-"))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = folder / "rsa"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        factory = sftp_server.SFTPFactory(None, sftp_server.load_host_keys([path]))
        built = factory.buildProtocol(None)
        self.assertIn(b"rsa-sha2-512", built.supportedPublicKeys)
        self.assertNotIn(b"ssh-rsa", built.supportedPublicKeys)


class KeyVerdictTests(SynchronousTestCase):
    """`_key_verdict`, the blocking heart of SSHKeyChecker."""

    def setUp(self) -> None:
        line, private = _key_line()
        self.line = line
        self.key = keys.Key(private)
        self.blob = self.key.public().blob()
        self.account = Account(name="alice", ssh_keys=(line,))
        self.decision = decide_ssh(
            name="alice", account=self.account, address="::1", classes=CLASSES
        )

    def credentials(
        self, signed: bool = True, algorithm: bytes = b"ssh-ed25519", data: bytes = b"m"
    ) -> Any:
        signature = self.key.sign(data) if signed else None
        return sftp_auth.SSHKeyLogin(
            b"alice", algorithm, self.blob, b"m" if signed else None, signature, "::1"
        )

    def test_good_signature_logs_in(self) -> None:
        self.assertEqual(
            sftp_auth._key_verdict(self.credentials(), self.account, self.decision), "alice"
        )

    def test_query_without_signature_is_valid_public_key(self) -> None:
        self.assertRaises(
            conch_error.ValidPublicKey,
            sftp_auth._key_verdict,
            self.credentials(signed=False),
            self.account,
            self.decision,
        )

    def test_refusals(self) -> None:
        frank = decide_ssh(name="frank", account=None, address="::1", classes=CLASSES)
        cases = [
            (self.credentials(data=b"other"), self.account, self.decision),  # bad signature
            (self.credentials(algorithm=b"ssh-rsa"), self.account, self.decision),
            (self.credentials(), None, self.decision),  # unknown account
            (self.credentials(), Account(name="alice"), self.decision),  # key not on it
            (self.credentials(), self.account, frank),  # class without publickey
        ]
        for credentials, account, decision in cases:
            self.assertIsNone(sftp_auth._key_verdict(credentials, account, decision))


class AEADTests(SynchronousTestCase):
    """The AEAD packet codecs: round trips, sequence-bound, tampering refused."""

    def pairs(self) -> list[tuple[Any, Any]]:
        from securetransport.sftp import aead

        key, iv = bytes(range(64)), bytes(range(100, 112))
        return [
            (aead.protection(name, key, iv), aead.protection(name, key, iv))
            for name in (
                b"aes128-gcm@openssh.com",
                b"aes256-gcm@openssh.com",
                b"chacha20-poly1305@openssh.com",
            )
        ]

    def test_round_trip_in_pieces(self) -> None:
        for sender, receiver in self.pairs():
            stream = b"".join(sender.seal(bytes([n]) * (n * 37), n) for n in range(20))
            got = []
            buffer = b""
            sequence = 0
            for offset in range(0, len(stream), 100):
                buffer += stream[offset : offset + 100]
                while (opened := receiver.open(buffer, sequence)) is not None:
                    payload, used = opened
                    got.append(payload)
                    buffer = buffer[used:]
                    sequence += 1
            self.assertEqual(got, [bytes([n]) * (n * 37) for n in range(20)])

    def test_tampering_and_wrong_sequence_refused(self) -> None:
        from securetransport.sftp import aead

        for sender, receiver in self.pairs():
            packet = bytearray(sender.seal(b"hello world", 5))
            packet[-20] ^= 1
            self.assertRaises(aead.PacketError, receiver.open, bytes(packet), 5)
        sender, receiver = self.pairs()[2]
        self.assertRaises(aead.PacketError, receiver.open, sender.seal(b"x", 1), 2)

    def test_none_for_other_ciphers(self) -> None:
        from securetransport.sftp import aead

        self.assertIsNone(aead.protection(b"aes256-ctr", bytes(64), bytes(16)))


class EncryptThenMACTests(SynchronousTestCase):
    def test_round_trip_and_tamper(self) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        from securetransport.sftp import aead

        key, iv, mac_key = bytes(range(32)), bytes(range(16)), bytes(range(100, 164))
        for name in aead.ETM_MACS:
            sender = aead.etm(name, Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor(), mac_key)
            receiver = aead.etm(
                name, Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor(), mac_key
            )
            assert sender is not None and receiver is not None
            packets = [sender.seal(bytes([n]) * (n * 100), n) for n in range(10)]
            for n, packet in enumerate(packets):
                self.assertEqual(receiver.open(packet, n), (bytes([n]) * (n * 100), len(packet)))
            bad = bytearray(sender.seal(b"payload", 10))
            bad[6] ^= 1
            self.assertRaises(aead.PacketError, receiver.open, bytes(bad), 10)
        self.assertIsNone(aead.etm(b"hmac-sha2-256", None, b""))


class KeyCheckerSnapshotTests(SynchronousTestCase):
    """SSHKeyChecker decides on the account the request already read, when it has it."""

    def setUp(self) -> None:
        line, private = _key_line()
        self.key = keys.Key(private)
        self.account = Account(name="alice", ssh_keys=(line,))
        self.store = MemoryUserStore((self.account,))
        self.reads: list[str] = []
        get = self.store.get

        def counted(name: str) -> Account | None:
            self.reads.append(name)
            return get(name)

        self.patch(self.store, "get", counted)
        self.checker = sftp_auth.SSHKeyChecker(self.store, SyncVerificationPool(), CLASSES)  # type: ignore[arg-type]

    def login(self, account: Account | None) -> Any:
        blob = self.key.public().blob()
        snapshot = AccountSnapshot("alice", account)
        credentials = sftp_auth.SSHKeyLogin(
            b"alice", b"ssh-ed25519", blob, b"m", self.key.sign(b"m"), "::1", snapshot
        )
        return self.checker.requestAvatarId(credentials)

    def test_the_snapshot_is_used_not_reread(self) -> None:
        avatar_id = self.successResultOf(self.login(self.account))
        self.assertEqual((avatar_id, avatar_id.account, self.reads), ("alice", self.account, []))
        for refused in (None, Account(name="alice"), Account(name="alice", enabled=False)):
            self.failureResultOf(self.login(refused), UnauthorizedLogin)
        self.assertEqual(self.reads, [])

    def test_without_a_snapshot_the_account_is_read(self) -> None:
        blob = self.key.public().blob()
        credentials = sftp_auth.SSHKeyLogin(
            b"alice", b"ssh-ed25519", blob, b"m", self.key.sign(b"m"), "::1"
        )
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(credentials)), "alice")
        self.assertEqual(self.reads, ["alice"])
