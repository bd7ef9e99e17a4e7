"""The engine driven through a fake IControlChannel: no transport, no protocol shell, no
threads, no disk. What the engine asks of its channel (replies, TLS, data set-ups, reuse
groups, closing) is exactly what an edge link will have to carry."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securetransport.audit import AuditLog, XferLog
from securetransport.config import ClassConfig, Config, PassiveConfig, ServerConfig, TLSConfig
from securetransport.ftp import parser
from securetransport.ftp.channel import DataReport, IControlChannel
from securetransport.ftp.data import DataChannel, DataTLS
from securetransport.ftp.engine import Engine
from securetransport.ftp.passive import PassivePortProvider
from securetransport.ftp.session import Session
from securetransport.ftp.state import Phase
from securetransport.runtime import ServerRuntime
from securetransport.tls.facts import HandshakeInfo
from tests.fakes import MemoryUserStore, SyncAsyncUserStore, memory_account, memory_portal
from tests.ftp.test_protocol import parse_replies

PASSWORD = "correct horse"
PEER = "192.0.2.7"


@implementer(IControlChannel)
class FakeChannel:
    """Records what the engine asks; `replies()` parses what it sent."""

    peer = PEER
    peer_port = 50000
    local_host = "192.0.2.1"
    local_port = 2121
    announced = ""

    def __init__(self, tls_ready: bool = True) -> None:
        self.sent = b""
        self.calls: list[tuple[Any, ...]] = []
        self.tls_ready = tls_ready
        self.reading = True

    def send(self, data: bytes) -> None:
        self.sent += data

    def replies(self) -> list[tuple[int, str]]:
        replies, self.sent = parse_replies(self.sent), b""
        return replies

    def codes(self) -> list[int]:
        return [code for code, _ in self.replies()]

    def start_tls(self) -> None:
        self.calls.append(("start_tls",))

    def session_ready(self) -> bool:
        return self.tls_ready

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.calls.append(("close",))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def join_reuse_group(self, account: str) -> None:
        self.calls.append(("join", account))

    def leave_reuse_group(self) -> None:
        self.calls.append(("leave",))

    def passive_data(
        self, reuse: Any, report: DataReport, timeout: float
    ) -> tuple[DataChannel, int]:
        self.calls.append(("passive", reuse, timeout))
        tls = DataTLS(object(), lambda connection: None) if reuse is not None else None
        return DataChannel(MemoryReactorClock(), PEER, tls, timeout), 61000

    def active_data(
        self, reuse: Any, report: DataReport, timeout: float, host: str, port: int
    ) -> DataChannel:
        self.calls.append(("active", reuse, timeout, host, port))
        tls = DataTLS(object(), lambda connection: None) if reuse is not None else None
        return DataChannel(MemoryReactorClock(), PEER, tls, timeout)


HANDSHAKE = HandshakeInfo(tls_version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", resumed=False,
                          resumed_from_control=False)  # fmt: skip


class EngineThroughChannelTests(SynchronousTestCase):
    def make(self, klass: ClassConfig, tls_ready: bool = True) -> tuple[Engine, FakeChannel]:
        store = MemoryUserStore((memory_account("alice", PASSWORD),))
        users = SyncAsyncUserStore(store)
        server = ServerConfig(home_root=cast(Any, "/nonexistent"), users="sqlite:/x")
        config = Config(
            server=server,
            passive=PassiveConfig(ports=(61000, 61009)),
            tls=TLSConfig(certificate_user="none"),  # type: ignore[arg-type]
            classes=(klass,),
        )
        clock: Any = MemoryReactorClock()
        runtime = ServerRuntime(
            config=config,
            reactor=clock,
            portal=memory_portal(users),
            users=users,
            passive=PassivePortProvider(clock, 61000, 61009),
            audit=AuditLog(None),
            xferlog=XferLog(None),
        )
        channel = FakeChannel(tls_ready)
        verifyObject(IControlChannel, channel)
        return Engine(Session(runtime, channel, False, "test")), channel

    def send(self, engine: Engine, line: str) -> None:
        command = parser.parse_command(line.encode())
        assert isinstance(command, parser.Command)
        engine.dispatch(command)

    def test_login_and_files_only_through_the_channel(self) -> None:
        engine, channel = self.make(ClassConfig(name="c", ssl="optional", login=("password",)))
        for line in ("USER alice", f"PASS {PASSWORD}", "PWD", "TYPE I", "PASV"):
            self.send(engine, line)
        self.assertEqual(channel.codes(), [331, 230, 257, 200, 227])
        self.assertEqual(channel.replies(), [])
        self.assertIs(engine.session.state.phase, Phase.LOGGED_IN)
        self.assertEqual(channel.calls, [("passive", None, 120)])  # clear data: no reuse rule
        self.send(engine, "QUIT")
        self.assertEqual(channel.codes(), [221])
        self.assertEqual(channel.calls[-1], ("close",))

    def test_auth_tls_and_protected_data_set_ups(self) -> None:
        klass = ClassConfig(name="c", ssl="mandatory", login=("password",), session_reuse="account")
        engine, channel = self.make(klass)
        self.send(engine, "USER alice")
        self.assertEqual(channel.codes(), [530])  # clear channel, mandatory class
        self.send(engine, "AUTH TLS")
        self.assertEqual(channel.codes(), [234])
        self.assertEqual(channel.calls, [("start_tls",)])
        engine.tls_up(HANDSHAKE)
        self.assertTrue(engine.session.facts().protected)
        self.assertEqual(engine.session.facts().tls_version, "TLSv1.3")
        for line in (
            "USER alice",
            f"PASS {PASSWORD}",
            "PBSZ 0",
            "PROT P",
            "EPRT |1|192.0.2.7|6000|",
        ):
            self.send(engine, line)
        self.assertEqual(channel.codes(), [331, 230, 200, 200, 200])
        self.assertEqual(
            channel.calls[1:],
            [("join", "alice"), ("active", "account", 120, "192.0.2.7", 6000)],
        )
        # PROT C, then a clear set-up: a mandatory class refuses the transfer (521) and the
        # engine never asks the channel for anything else.
        for line in ("PROT C", "PASV", "LIST"):
            self.send(engine, line)
        self.assertEqual(channel.codes(), [200, 227, 521])
        self.send(engine, "REIN")
        self.assertEqual(channel.codes(), [220])
        self.assertEqual(channel.calls[-2:], [("passive", None, 120), ("leave",)])
        self.assertIs(engine.session.state.phase, Phase.CONNECTED)
        self.assertTrue(engine.session.state.protected)  # REIN keeps TLS

    def test_auth_without_tls_material(self) -> None:
        engine, channel = self.make(ClassConfig(name="c", ssl="optional"), tls_ready=False)
        self.send(engine, "AUTH TLS")
        self.assertEqual(channel.codes(), [504])
        self.assertEqual(channel.calls, [])

    def test_port_to_another_address_never_reaches_the_channel(self) -> None:
        engine, channel = self.make(ClassConfig(name="c", ssl="optional", login=("password",)))
        for line in ("USER alice", f"PASS {PASSWORD}", "PORT 192,0,2,99,23,112"):
            self.send(engine, line)
        self.assertEqual(channel.codes(), [331, 230, 504])
        self.assertEqual(channel.calls, [])
