"""Medians, ratios, the printed table and the JSON results file."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loads import METRICS, Metric, Value


@dataclass
class Measurement:
    """One metric on one server in one repetition."""

    server: str
    metric: str
    repetition: int
    ok: bool
    values: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Summary:
    """Median and range of one value of one metric on one server."""

    median: float | None
    low: float | None
    high: float | None
    runs: int
    failed: int
    error: str = ""


def summarize(measurements: Sequence[Measurement], server: str, metric: str, key: str) -> Summary:
    """Median (min, max) over the successful repetitions."""
    mine = [m for m in measurements if m.server == server and m.metric == metric]
    values = [m.values[key] for m in mine if m.ok and key in m.values]
    failed = [m for m in mine if not m.ok]
    error = failed[0].error if failed else ""
    if not values:
        return Summary(None, None, None, len(mine), len(failed), error)
    return Summary(
        statistics.median(values), min(values), max(values), len(mine), len(failed), error
    )


def ratio(ours: Summary, peer: Summary) -> float | None:
    """ours / peer of the medians, when both exist."""
    if ours.median is None or peer.median is None or peer.median == 0:
        return None
    return ours.median / peer.median


def best_peer(
    summaries: dict[str, Summary], peers: Sequence[str], value: Value
) -> tuple[str, Summary] | None:
    """The peer with the best median for `value` (highest or lowest as it says)."""
    ranked = [(name, summaries[name]) for name in peers if summaries[name].median is not None]
    if not ranked:
        return None
    pick = max if value.higher_is_better else min
    return pick(ranked, key=lambda item: item[1].median or 0.0)


def _cell(summary: Summary | None, value: Value, status: str) -> str:
    if status:
        return status
    if summary is None or summary.runs == 0:
        return "-"
    if summary.median is None:
        return "failed"
    fmt = f"{{:.{value.digits}f}}"
    text = fmt.format(summary.median)
    if summary.runs > 1:
        text += f" ({fmt.format(summary.low)}-{fmt.format(summary.high)})"
    if summary.failed:
        text += f" [{summary.failed} failed]"
    return text


def table(
    measurements: Sequence[Measurement],
    servers: Sequence[str],
    ours: str,
    metrics: Sequence[str],
    unavailable: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """The printed table and the summary that goes into the JSON."""
    peers = [name for name in servers if name != ours]
    ratio_columns = [name for name in peers if name not in unavailable]
    header = ["metric", *servers]
    if ours in servers and ours not in unavailable and ratio_columns:
        header += [f"ours/{name}" for name in ratio_columns] + ["ours/best peer"]
    rows: list[list[str]] = [header]
    summary: dict[str, Any] = {}
    for name in metrics:
        metric: Metric = METRICS[name]
        for value in metric.values:
            per_server = {s: summarize(measurements, s, name, value.key) for s in servers}
            better = "higher" if value.higher_is_better else "lower"
            row = [f"{metric.title}: {value.label} ({better} is better)"]
            row += [_cell(per_server[s], value, _status(s, unavailable, metric)) for s in servers]
            entry: dict[str, Any] = {s: asdict(per_server[s]) for s in servers}
            if len(header) > len(servers) + 1:
                ratios = {p: ratio(per_server[ours], per_server[p]) for p in ratio_columns}
                row += [_ratio_text(ratios[p]) for p in ratio_columns]
                best = best_peer(per_server, ratio_columns, value)
                best_ratio = ratio(per_server[ours], best[1]) if best else None
                row.append(_ratio_text(best_ratio) + (f" ({best[0]})" if best else ""))
                entry["ratios"] = ratios
                entry["best_peer"] = best[0] if best else None
                entry["ratio_to_best_peer"] = best_ratio
            summary[f"{name}.{value.key}"] = entry
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines), summary


def _status(server: str, unavailable: dict[str, str], metric: Metric) -> str:
    if not metric.applies_to(server):
        return "n/a"
    return "not available" if server in unavailable else ""


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def failures(measurements: Sequence[Measurement]) -> list[str]:
    """One line per distinct (server, metric) failure, with its first error."""
    seen: dict[tuple[str, str], str] = {}
    for m in measurements:
        if not m.ok and (m.server, m.metric) not in seen:
            seen[(m.server, m.metric)] = m.error
    return [f"{server} {metric}: {error}" for (server, metric), error in seen.items()]


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
