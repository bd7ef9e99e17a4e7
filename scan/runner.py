"""Run sslyze (from its own venv) against loopback ports, each run with its own JSON file."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from scan.rules import PLUGINS

SSLYZE_TIMEOUT: Final = 300.0


class RunError(Exception):
    """sslyze did not leave a JSON document to read; one line."""


@dataclass(frozen=True)
class Target:
    name: str  # "explicit" | "implicit"
    host: str
    port: int
    starttls: str | None  # "ftp" for explicit FTPS

    def argv(self, sslyze: Path, json_out: Path, ca_file: Path | None) -> list[str]:
        """The sslyze command line: only the plugins the rules need, JSON out, no stdout."""
        if not ipaddress.ip_address(self.host).is_loopback:
            raise RunError(f"{self.host} is not a loopback address: the scan stays on loopback")
        argv = [str(sslyze), "--quiet", "--mozilla_config", "disable", *PLUGINS.values()]
        if ca_file is not None:
            argv += ["--certinfo_ca_file", str(ca_file)]
        if self.starttls:
            argv += ["--starttls", self.starttls]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [*argv, "--json_out", str(json_out), f"{host}:{self.port}"]


@dataclass(frozen=True)
class Outcome:
    target: Target
    document: dict[str, Any]
    json_path: Path
    seconds: float
    exit_code: int  # informational only: sslyze exits 1 whenever any plugin fails


def run_all(
    sslyze: Path,
    targets: list[Target],
    work: Path,
    ca_file: Path | None = None,
    timeout: float = SSLYZE_TIMEOUT,
) -> list[Outcome]:
    """Run sslyze once per target, all at once, each bounded by `timeout` seconds."""
    environ = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "HOME") if k in os.environ}
    environ["PYTHONWARNINGS"] = "ignore"  # trust-store deprecation noise from cryptography
    running: list[tuple[Target, Path, Path, subprocess.Popen[bytes], float]] = []
    try:
        for target in targets:
            json_out = work / f"sslyze-{target.name}.json"
            log = work / f"sslyze-{target.name}.log"
            json_out.unlink(missing_ok=True)
            with log.open("wb") as sink:
                try:
                    process = subprocess.Popen(
                        target.argv(sslyze, json_out, ca_file),
                        env=environ,
                        stdin=subprocess.DEVNULL,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as error:
                    raise RunError(f"cannot run {sslyze}: {error}") from None
            running.append((target, json_out, log, process, time.monotonic()))
        outcomes = []
        deadline = time.monotonic() + timeout
        for target, json_out, log, process, started in running:
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RunError(
                    f"sslyze on the {target.name} port: no result within {timeout:g} s"
                ) from None
            seconds = time.monotonic() - started
            outcomes.append(
                Outcome(target, _read_json(target, json_out, log, code), json_out, seconds, code)
            )
        return outcomes
    finally:
        for *_, process, _started in running:
            _stop(process)


def _read_json(target: Target, json_out: Path, log: Path, code: int) -> dict[str, Any]:
    try:
        document = json.loads(json_out.read_text())
    except (OSError, ValueError) as error:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise RunError(
            f"sslyze on the {target.name} port (exit {code}) wrote no readable JSON "
            f"({error.__class__.__name__}): {tail[-1] if tail else 'no output'}"
        ) from None
    if not isinstance(document, dict):
        raise RunError(f"sslyze on the {target.name} port: the JSON is not an object")
    return document


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
