"""What a server that drops privileges (twistd --uid/--gid) needs, wherever the checkout is.

After the drop, the server still imports modules (lazily) and the worker processes start
the interpreter again, as the unprivileged user. A checkout (and its `.venv`) in a folder
that user cannot enter (a clone in root's home, a `mktemp -d` folder) would make those
imports fail. `runtime()` gives, once per process, a folder every user can read with:

- `venv/`: a venv (no packages of its own) made from the base interpreter, or, when
  other users cannot run that one (pyenv in root's home), from a system interpreter of
  the same version (/usr/bin/pythonX.Y) that they can;
- `site/`: the packages installed in the running environment (hard links where the file
  system allows, else copies; no `.pth` files, no caches);
- `src/`: a copy of the project's packages (`securetransport`, its twistd plugin).

Run the server as `runtime().twistd_command()` with `runtime().env()`: everything it
imports comes from these copies, before and after the drop.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import securetransport

PROJECT = Path(securetransport.__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"
_CANDIDATE_ROOTS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))


def searchable_by_all(folder: Path) -> bool:
    """True when every user can reach `folder`: it and each parent has the x bit for others."""
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in (folder, *folder.parents))
    except OSError:
        return False


def readable_folder(prefix: str) -> Path:
    """A new folder, mode 0755, in a temporary folder every user can reach.

    The default temporary folder if it qualifies, else /tmp, /var/tmp or /dev/shm;
    RuntimeError if none does (never a silent fallback).
    """
    candidates = [Path(tempfile.gettempdir()), *_CANDIDATE_ROOTS]
    for root in candidates:
        if root.is_dir() and searchable_by_all(root.resolve()):
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()
            folder.chmod(0o755)
            return folder
    raise RuntimeError(f"no temporary folder every user can reach among {candidates}")


def runnable_by_all(program: str) -> bool:
    """True when every user may run `program`: its real file has the x bit for others and
    every folder above it can be searched by them."""
    real = Path(os.path.realpath(program))
    try:
        return bool(real.stat().st_mode & stat.S_IXOTH) and searchable_by_all(real.parent)
    except OSError:
        return False


def interpreter() -> str:
    """The base interpreter if every user may run it, else one of the same version that
    they may (the packages copied for it are built for that version); else the base."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (base, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if runnable_by_all(candidate):
            return candidate
    return base


@dataclass(frozen=True)
class Runtime:
    """An interpreter and a PYTHONPATH the unprivileged server can use."""

    folder: Path
    python: str
    pythonpath: str

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with PYTHONPATH set to the copies."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = self.pythonpath
        env["PYTHONSAFEPATH"] = "1"  # not the working folder either (`-c` would add it)
        env.pop("PYTHONHOME", None)
        return env

    def twistd_command(self) -> list[str]:
        return [self.python, "-c", TWISTD]


def _link_or_copy(source: str, target: str) -> None:
    """A hard link when the file is readable by all and the file system allows it (fast,
    no space); else a copy made readable by all."""
    mode = os.stat(source).st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
    os.chmod(target, stat.S_IMODE(mode) | 0o444 | (0o111 if mode & 0o100 else 0))


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {
        name
        for name in names
        if name == "__pycache__" or name.endswith(".pth") or name == "dropin.cache"
    }


def _copy_file(source: str, target: str) -> None:
    shutil.copy2(source, target)
    mode = os.stat(source).st_mode
    os.chmod(target, stat.S_IMODE(mode) | 0o444 | (0o111 if mode & 0o100 else 0))


def _copy_tree(source: Path, target: Path, *, link: bool) -> None:
    shutil.copytree(
        source,
        target,
        ignore=_ignore,
        copy_function=_link_or_copy if link else _copy_file,
        dirs_exist_ok=True,
        symlinks=False,
    )


def _open_up(folder: Path) -> None:
    """Folders 0755 (files made here are copies or links to files others can read)."""
    for path, dirnames, _ in os.walk(folder):
        os.chmod(path, 0o755)
        for name in dirnames:
            os.chmod(os.path.join(path, name), 0o755)


@functools.cache
def runtime() -> Runtime:
    """Build the folder (once per process; removed at exit)."""
    folder = readable_folder("st-runtime-")
    atexit.register(shutil.rmtree, folder, True)
    subprocess.run(
        [interpreter(), "-m", "venv", "--without-pip", str(folder / "venv")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    site_copy = folder / "site"
    site_copy.mkdir()
    installed = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        installed.append(site.getusersitepackages())
    for packages in dict.fromkeys(installed):
        if Path(packages).is_dir():
            _copy_tree(Path(packages), site_copy, link=True)
    src = folder / "src"
    _copy_tree(PROJECT / "securetransport", src / "securetransport", link=False)
    plugins = src / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    plugin = "securetransport_plugin.py"
    _copy_file(str(PROJECT / "twisted" / "plugins" / plugin), str(plugins / plugin))
    _open_up(folder)
    python = folder / "venv" / "bin" / "python"
    return Runtime(folder, str(python), os.pathsep.join([str(src), str(site_copy)]))
