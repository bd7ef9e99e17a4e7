"""Debian packages unpacked (not installed) into the bench cache with `dpkg -x`.

Installed normally, the Debian FTP servers conflict with each other and start on port
21; unpacked, they run in the foreground on high loopback ports.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class PackageUnavailable(Exception):
    """A package that could not be downloaded or unpacked; the message says why."""


def unpacked(cache: Path, package: str, timeout: float = 180) -> Path:
    """The folder holding `package`'s files, downloading and unpacking it on first use."""
    root = cache / "debian" / package
    marker = root / ".unpacked"
    if marker.exists():
        return root
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise PackageUnavailable(f"{tool} not found (a Debian-based system is needed)")
    downloads = cache / "debian" / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    debs = sorted(downloads.glob(f"{package}_*.deb"))
    if not debs:
        try:
            done = subprocess.run(
                ["apt-get", "download", package],
                cwd=downloads,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PackageUnavailable(f"apt-get download {package}: timed out") from None
        debs = sorted(downloads.glob(f"{package}_*.deb"))
        if done.returncode != 0 or not debs:
            lines = [line for line in done.stderr.splitlines() if line.startswith("E:")]
            why = lines[-1] if lines else f"exit {done.returncode}"
            raise PackageUnavailable(f"apt-get download {package}: {why} (try apt-get update)")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    done = subprocess.run(
        ["dpkg", "-x", str(debs[-1]), str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise PackageUnavailable(f"dpkg -x {debs[-1].name}: {done.stderr.strip()}")
    marker.write_text(debs[-1].name + "\n")
    return root


def version(root: Path) -> str:
    """The Debian version of an unpacked package, from its .deb file name."""
    try:
        name = (root / ".unpacked").read_text().strip()
    except OSError:
        return "?"
    parts = name.split("_")
    return parts[1] if len(parts) >= 2 else name


def library_dirs(root: Path) -> list[str]:
    """Folders of shared libraries inside an unpacked package, for LD_LIBRARY_PATH."""
    found = {str(path.parent) for path in root.glob("usr/lib/*/*.so*")}
    found |= {str(path.parent) for path in root.glob("lib/*/*.so*")}
    return sorted(found)
