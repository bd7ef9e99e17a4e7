"""`[metrics]`: `GET /metrics` (Prometheus text format, prometheus-client) and `GET /health`.

What is counted (SPEC section 11):

- counters, fed by the audit events the sessions already write (`observe`), so no
  session code knows about metrics: logins by protocol, method and result; TLS
  handshakes by channel and version; data-connection reuse results; 521/522
  refusals; transfers and bytes by direction, protocol and result;
- gauges, read from the runtime (`refresh`): sessions open by protocol and class,
  bans active, edge links up, the password-verification queue, draining.

`/health` is 200 while serving and 503 while draining, so a balancer stops sending new
sessions first. Nothing is served unless `[metrics]` is configured.

With `server.workers`, the supervisor serves the one endpoint: each worker writes its
values to prometheus-client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`, set by the
supervisor for the workers only) and refreshes its gauges every second; the supervisor
aggregates them (`MultiProcessCollector`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from securetransport.passwords import VerificationPool
from securetransport.runtime import ServerRuntime

log = Logger(namespace="securetransport.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REFRESH_SECONDS = 1.0
PREFIX = "securetransport"


class Metrics:
    """The metric families of one process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(
                f"{PREFIX}_{name}", text, list(labels), registry=r, multiprocess_mode="livesum"
            )

        self.logins = Counter(
            f"{PREFIX}_logins", "Logins by protocol, method and result",
            ["protocol", "method", "result"], registry=r,
        )  # fmt: skip
        self.tls_handshakes = Counter(
            f"{PREFIX}_tls_handshakes", "TLS handshakes by channel and version",
            ["channel", "version"], registry=r,
        )  # fmt: skip
        self.tls_reuse = Counter(
            f"{PREFIX}_tls_data_reuse",
            "Data-connection TLS handshakes by reuse result (resumed, new, refused)",
            ["result"], registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            f"{PREFIX}_refusals", "Transfers refused: 521 (PROT C where TLS is mandatory), 522",
            ["reply"], registry=r,
        )  # fmt: skip
        self.transfers = Counter(
            f"{PREFIX}_transfers", "Transfers by direction, protocol and result",
            ["direction", "protocol", "result"], registry=r,
        )  # fmt: skip
        self.transfer_bytes = Counter(
            f"{PREFIX}_transfer_bytes", "Bytes transferred by direction and protocol",
            ["direction", "protocol"], registry=r,
        )  # fmt: skip
        self.sessions_open = gauge(
            "sessions_open", "Sessions open by protocol and class", ("protocol", "class")
        )
        self.bans_active = gauge("bans_active", "Addresses banned now")
        self.edge_links_up = gauge("edge_links_up", "Edge links up")
        self.password_queue = gauge("password_queue", "Password verifications queued or running")
        self.draining = gauge("draining", "1 while the node drains (SIGTERM)")
        self._session_labels: set[tuple[str, str]] = set()

    # -- counters from the audit events ---------------------------------------------------
    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """An audit event (securetransport.audit.AuditLog.event): count what it says."""
        protocol = str(fields.get("protocol") or "ftp")
        if event == "login":
            self.logins.labels(protocol, str(fields.get("method")), str(fields.get("result"))).inc()
        elif event == "tls":
            channel = str(fields.get("channel") or "control")
            self.tls_handshakes.labels(channel, str(fields.get("version"))).inc()
            if channel == "data":
                if fields.get("accepted") is False:
                    self.tls_reuse.labels("refused").inc()
                    self.refusals.labels("522").inc()
                else:
                    self.tls_reuse.labels("resumed" if fields.get("resumed") else "new").inc()
        elif event == "refused":
            self.refusals.labels(str(fields.get("reply"))).inc()
        elif event == "transfer":
            direction = str(fields.get("direction"))
            self.transfers.labels(direction, protocol, str(fields.get("result"))).inc()
            self.transfer_bytes.labels(direction, protocol).inc(int(fields.get("bytes") or 0))

    # -- gauges from the runtime --------------------------------------------------------------
    def refresh(
        self,
        runtime: ServerRuntime,
        password_pool: VerificationPool | None = None,
        links_up: int = 0,
    ) -> None:
        """Set the gauges from the runtime's state now."""
        counts: dict[tuple[str, str], int] = {}
        for session in list(runtime.open_sessions):
            klass = session.klass
            key = (str(session.protocol), klass.name if klass else "none")
            counts[key] = counts.get(key, 0) + 1
        for key in self._session_labels - counts.keys():
            self.sessions_open.labels(*key).set(0)
        for key, count in counts.items():
            self.sessions_open.labels(*key).set(count)
        self._session_labels |= counts.keys()
        # The shared (workers) guard keeps no list of bans: the gauge stays 0 there.
        active = getattr(runtime.guard, "active_bans", None)
        if active is not None:
            self.bans_active.set(active(runtime.reactor.seconds()))
        self.password_queue.set(password_pool.pending if password_pool is not None else 0)
        self.edge_links_up.set(links_up)
        self.draining.set(1 if runtime.draining else 0)


# --- HTTP --------------------------------------------------------------------------------


class _Health(Resource):
    isLeaf = True

    def __init__(self, draining: Callable[[], bool]) -> None:
        super().__init__()
        self.is_draining = draining

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.is_draining():
            request.setResponseCode(503)
            return b"draining\n"
        return b"ok\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[], bytes]) -> None:
        super().__init__()
        self.render_text = render

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.render_text()


def metrics_site(render: Callable[[], bytes], draining: Callable[[], bool]) -> Site:
    """The endpoint: `/metrics` and `/health`; anything else is 404."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(render))
    root.putChild(b"health", _Health(draining))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


def listen_metrics(
    reactor: Any, config: Any, render: Callable[[], bytes], draining: Callable[[], bool]
) -> IListeningPort:
    """Serve `[metrics]` (a config.MetricsConfig) on its address and port."""
    port: IListeningPort = reactor.listenTCP(
        config.port, metrics_site(render, draining), interface=config.address
    )
    log.info(
        "serving metrics on http://{address}:{port}/metrics",
        address=config.address,
        port=port.getHost().port,  # type: ignore[attr-defined]
    )
    return port


def render_registry(registry: CollectorRegistry, before: Callable[[], None] | None = None) -> bytes:
    if before is not None:
        before()
    return generate_latest(registry)


def multiprocess_render(folder: str) -> Callable[[], bytes]:
    """The supervisor's `/metrics`: the workers' values, aggregated from `folder`."""
    from prometheus_client import multiprocess

    def render() -> bytes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry)

    return render


def in_worker_multiprocess_mode() -> bool:
    """True in a worker whose supervisor asked for multiprocess metrics files."""
    return bool(os.environ.get(MULTIPROC_ENV))
