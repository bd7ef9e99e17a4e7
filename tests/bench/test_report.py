"""bench/report.py and the metric registry: servers a metric does not apply to show "n/a"."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.loads import COLD_SERVERS, METRICS
from bench.report import Measurement, table
from bench.servers import cold_names


class NotApplicableTests(SynchronousTestCase):
    def test_cold_metric_only_on_servers_with_many_accounts(self) -> None:
        metric = METRICS["sessions_ftplib_cold"]
        self.assertTrue(all(metric.applies_to(name) for name in COLD_SERVERS))
        self.assertFalse(metric.applies_to("vsftpd"))
        self.assertTrue(METRICS["sessions_ftplib"].applies_to("vsftpd"))

    def test_table_marks_not_applicable_and_ratios_use_applicable_peers(self) -> None:
        values = {"sessions_per_s": 10.0, "cpu_ms_per_session": 50.0}
        peer = {"sessions_per_s": 100.0, "cpu_ms_per_session": 5.0}
        measurements = [
            Measurement("securetransport", "sessions_ftplib_cold", 0, True, values),
            Measurement("pyftpdlib", "sessions_ftplib_cold", 0, True, peer),
        ]
        text, summary = table(
            measurements,
            ["securetransport", "pyftpdlib", "vsftpd"],
            "securetransport",
            ["sessions_ftplib_cold"],
            {},
        )
        rate_row = [line for line in text.splitlines() if "sessions/s" in line][0]
        self.assertIn("n/a", rate_row)
        entry = summary["sessions_ftplib_cold.sessions_per_s"]
        self.assertEqual(entry["best_peer"], "pyftpdlib")
        self.assertAlmostEqual(entry["ratio_to_best_peer"], 0.1)
        self.assertIsNone(entry["ratios"]["vsftpd"])

    def test_scaled_memory_metrics_are_ours_and_pyftpdlibs(self) -> None:
        for count in (1000, 10000):
            self.assertTrue(METRICS[f"idle_memory_{count}"].applies_to("securetransport"))
            self.assertTrue(METRICS[f"idle_memory_{count}"].applies_to("pyftpdlib"))
            self.assertFalse(METRICS[f"idle_memory_{count}"].applies_to("vsftpd"))


class ColdNamesTests(SynchronousTestCase):
    def test_distinct_valid_names(self) -> None:
        from securetransport.userstore import valid_account_name

        names = cold_names(500)
        self.assertEqual(len(set(names)), 500)
        self.assertTrue(all(valid_account_name(name) for name in names))
        self.assertEqual(names[0], "cold00001")
