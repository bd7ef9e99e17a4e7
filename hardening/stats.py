"""Small measuring helpers: percentiles, a latency sampler, an RSS sampler."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` (0-1) percentile by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def summary_ms(values: list[float]) -> dict[str, float | int]:
    """count, p50, p99 and worst of durations in seconds, as milliseconds."""
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 0.50) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "worst_ms": round(max(values, default=0.0) * 1000, 2),
    }


@dataclass
class Sampler:
    """Calls `probe` every `interval` seconds in a thread until stopped; keeps the results."""

    probe: Callable[[], float | int | None]
    interval: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    max_samples: int = 1_000_000
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        for _ in range(self.max_samples):
            if self._stop.is_set():
                return
            try:
                value = self.probe()
            except Exception:  # noqa: BLE001 - a failed probe is counted, not fatal
                self.errors += 1
                value = None
            if value is not None:
                self.samples.append((time.monotonic() - started, float(value)))
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def values(self) -> list[float]:
        return [value for _, value in self.samples]


def print_report(name: str, report: dict[str, Any], ok: bool) -> None:
    """PASS/FAIL and one `key: json value` line per report entry."""
    print(f"\n{name}: {'PASS' if ok else 'FAIL'}")
    for key, value in report.items():
        print(f"  {key}: {json.dumps(value)}")


def finish_report(
    name: str, report: dict[str, Any], ok: bool, *, json_path: Path | None, root: Path, keep: bool
) -> int:
    """Print the report, write it as JSON to `json_path` if given, remove the server folder
    `root` when the run passed and `keep` is off; the exit status (0 pass, 1 fail)."""
    print_report(name, report, ok)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if ok and not keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"{name}: server folder kept in {root}")
    return 0 if ok else 1
