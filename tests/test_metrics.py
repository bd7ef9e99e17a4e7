"""Metrics: counters from audit events, gauges from the runtime, the HTTP resources."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from securetransport.audit import AuditLog
from securetransport.limits import LoginGuard
from securetransport.metrics import Metrics, metrics_site


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class ObserveTests(SynchronousTestCase):
    def test_audit_events_are_counted(self) -> None:
        metrics = Metrics()
        audit = AuditLog(None)
        audit.observers.append(metrics.observe)
        audit.event("login", method="password", result="success")
        audit.event("login", method="password", result="failure")
        audit.event("login", method="certificate", result="success")
        audit.event("tls", channel="control", version="TLSv1.3", resumed=False)
        audit.event("tls", channel="data", version="TLSv1.3", resumed=True, accepted=True)
        audit.event("tls", channel="data", version="TLSv1.2", resumed=False, accepted=False)
        audit.event("refused", reply=521)
        audit.event("transfer", direction="send", result="ok", bytes=1000)
        audit.event("transfer", direction="receive", result="failed", bytes=10, protocol="sftp")
        found = samples(metrics)
        p = "securetransport_"
        self.assertEqual(
            found[
                (
                    p + "logins_total",
                    (("method", "password"), ("protocol", "ftp"), ("result", "success")),
                )
            ],
            1,
        )
        self.assertEqual(
            found[
                (
                    p + "logins_total",
                    (("method", "password"), ("protocol", "ftp"), ("result", "failure")),
                )
            ],
            1,
        )
        self.assertEqual(
            found[(p + "tls_handshakes_total", (("channel", "data"), ("version", "TLSv1.3")))], 1
        )
        self.assertEqual(found[(p + "tls_data_reuse_total", (("result", "resumed"),))], 1)
        self.assertEqual(found[(p + "tls_data_reuse_total", (("result", "refused"),))], 1)
        self.assertEqual(found[(p + "refusals_total", (("reply", "521"),))], 1)
        self.assertEqual(found[(p + "refusals_total", (("reply", "522"),))], 1)
        self.assertEqual(
            found[(p + "transfer_bytes_total", (("direction", "send"), ("protocol", "ftp")))], 1000
        )
        self.assertEqual(
            found[
                (
                    p + "transfers_total",
                    (("direction", "receive"), ("protocol", "sftp"), ("result", "failed")),
                )
            ],
            1,
        )

    def test_a_failing_observer_does_not_break_the_event(self) -> None:
        audit = AuditLog(None)
        seen: list[str] = []

        def broken(event: str, fields: dict[str, Any]) -> None:
            raise RuntimeError("boom")

        audit.observers.extend([broken, lambda event, fields: seen.append(event)])
        audit.event("login", method="password", result="success")
        self.assertEqual(seen, ["login"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_gauges_from_the_runtime(self) -> None:
        metrics = Metrics()
        guard = LoginGuard(1, 300)
        guard.record_failure("192.0.2.1", "x", now=100.0)
        runtime = SimpleNamespace(
            open_sessions=[
                SimpleNamespace(protocol="ftp", klass=SimpleNamespace(name="partners")),
                SimpleNamespace(protocol="ftp", klass=SimpleNamespace(name="partners")),
                SimpleNamespace(protocol="ftp", klass=None),
            ],
            guard=guard,
            reactor=SimpleNamespace(seconds=lambda: 150.0),
            draining=True,
        )
        metrics.refresh(runtime, SimpleNamespace(pending=3))
        found = samples(metrics)
        p = "securetransport_"
        self.assertEqual(
            found[(p + "sessions_open", (("class", "partners"), ("protocol", "ftp")))], 2
        )
        self.assertEqual(found[(p + "sessions_open", (("class", "none"), ("protocol", "ftp")))], 1)
        self.assertEqual(found[(p + "bans_active", ())], 1)
        self.assertEqual(found[(p + "password_queue", ())], 3)
        self.assertEqual(found[(p + "draining", ())], 1)
        runtime.open_sessions = []
        runtime.reactor = SimpleNamespace(seconds=lambda: 500.0)  # the ban is over
        metrics.refresh(runtime)
        found = samples(metrics)
        self.assertEqual(
            found[(p + "sessions_open", (("class", "partners"), ("protocol", "ftp")))], 0
        )
        self.assertEqual(found[(p + "bans_active", ())], 0)


class ResourceTests(SynchronousTestCase):
    def get(self, site: Any, path: bytes) -> DummyRequest:
        request = DummyRequest([path])
        resource = site.resource.getChildWithDefault(path, request)
        body = resource.render(request)
        request.written.append(body)
        return request

    def test_health_follows_draining_and_metrics_renders(self) -> None:
        state = {"draining": False}
        site = metrics_site(lambda: b"# metrics\n", lambda: state["draining"])
        request = self.get(site, b"health")
        self.assertEqual((request.responseCode or 200, b"".join(request.written)), (200, b"ok\n"))
        state["draining"] = True
        request = self.get(site, b"health")
        self.assertEqual((request.responseCode, b"".join(request.written)), (503, b"draining\n"))
        request = self.get(site, b"metrics")
        self.assertEqual(b"".join(request.written), b"# metrics\n")
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])
