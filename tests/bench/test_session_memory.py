"""bench/session_memory.py: the per-session breakdown from the three runs' figures."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.session_memory import breakdown


class BreakdownTests(SynchronousTestCase):
    def test_parts_add_up_and_tracemalloc_tables_are_subtracted(self) -> None:
        plain = {
            "sessions": 100,
            "before": {"pss_kib": 1000},
            "after": {"pss_kib": 6000},
            "login_s": 2.0,
        }
        traced = {
            "sessions": 100,
            "before": {"pss_kib": 1200, "tracemalloc_kib": 10, "objects": 500},
            "after": {
                "pss_kib": 8210,
                "tracemalloc_kib": 2010,
                "objects": 8500,
                "python_kib": 2000,
                "sites": [{"site": "a.py:1", "kib": 500.0, "blocks": 7}],
            },
        }
        bare = {"contexts": 100, "kib_per_context": 24.0, "python_kib_per_context": 4.0}
        row = breakdown(plain, traced, bare)
        self.assertEqual(row["pss_kib_per_session"], 50.0)
        self.assertEqual(row["pss_kib_per_session_traced_run"], 50.1)  # (7010 - 2000) / 100
        self.assertEqual(row["python_objects_kib"], 20.0)
        self.assertEqual(row["context_c_kib"], 20.0)
        self.assertEqual(row["tls_connection_and_other_c_kib"], 10.0)  # from the untraced run
        self.assertEqual(row["gc_objects_per_session"], 80.0)
        self.assertEqual(row["sites"][0]["kib_per_session"], 5.0)
