"""The multi-node keys of the configuration: [proxy], [metrics], shutdown_grace, postgresql URLs."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from securetransport.config import ConfigError, load_config


class NodeKeys(SynchronousTestCase):
    def load(self, text: str) -> object:
        path = Path(self.mktemp())
        path.mkdir()
        config = path / "st.toml"
        config.write_text(text)
        return load_config(config, ephemeral_range_file=None)

    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            self.load(text)
        return caught.exception.problems

    def test_defaults_are_off(self) -> None:
        config = self.load("")
        self.assertIsNone(config.proxy)  # type: ignore[attr-defined]
        self.assertIsNone(config.metrics)  # type: ignore[attr-defined]
        self.assertEqual(config.server.shutdown_grace, 30)  # type: ignore[attr-defined]

    def test_proxy(self) -> None:
        config = self.load(
            '[proxy]\nfrom = ["10.0.0.5/32", "::ffff:192.0.2.0/120"]\nrequired = true\n'
        )
        proxy = config.proxy  # type: ignore[attr-defined]
        self.assertEqual(
            proxy.trusted,
            (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("192.0.2.0/24")),
        )
        self.assertTrue(proxy.required)
        self.assertEqual(proxy.timeout, 3.0)

    def test_proxy_problems_name_the_key(self) -> None:
        self.assertEqual(self.problems("[proxy]\nrequired = true\n")[0][:11], "proxy.from:")
        self.assertTrue(self.problems('[proxy]\nfrom = ["nope"]\n')[0].startswith("proxy.from[1]:"))
        self.assertTrue(
            self.problems('[proxy]\nfrom = ["10.0.0.0/8"]\nfrm = 1\n')[0].startswith("proxy.frm:")
        )

    def test_metrics_and_grace(self) -> None:
        config = self.load(
            '[server]\nshutdown_grace = 5\n[metrics]\naddress = "127.0.0.1"\nport = 9999\n'
        )
        self.assertEqual(config.metrics.port, 9999)  # type: ignore[attr-defined]
        self.assertEqual(config.server.shutdown_grace, 5)  # type: ignore[attr-defined]
        self.assertTrue(self.problems("[metrics]\nport = 70000\n")[0].startswith("metrics.port:"))

    def test_postgresql_url(self) -> None:
        url = "postgresql://st@/securetransport?host=/run/postgresql"
        config = self.load(f'[server]\nusers = "{url}"\n')
        self.assertEqual(config.server.users, url)  # type: ignore[attr-defined]
        self.assertTrue(
            self.problems('[server]\nusers = "mysql://x"\n')[0].startswith("server.users:")
        )

    def test_proxy_from_everywhere_is_warned_about(self) -> None:
        config = self.load('[proxy]\nfrom = ["10.0.0.5/32", "0.0.0.0/0"]\n')
        proxy = [w for w in config.warnings if w.startswith("warning: proxy.")]  # type: ignore[attr-defined]
        self.assertEqual(len(proxy), 1, proxy)
        self.assertTrue(proxy[0].startswith("warning: proxy.from[2]: 0.0.0.0/0 "))
