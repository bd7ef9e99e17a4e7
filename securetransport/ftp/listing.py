"""Listing formats: LIST (`ls -l` lines), NLST, MLSD/MLST facts (RFC 3659), MDTM/MFMT times.

Pure functions from `FileStat` to text. Times are UTC and month names English
whatever the locale. No returned string contains CR, LF or NUL: the caller joins
lines with CRLF.
"""

from __future__ import annotations

import math
import re
import stat as statmodule
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from securetransport.vfs import FileStat

MLST_FACTS = ("type", "size", "modify", "perm", "unique", "unix.mode")
DEFAULT_FACTS = MLST_FACTS

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RECENT = 180 * 86400  # LIST shows the time of day for files younger than this ...
_FUTURE_SLACK = 86400  # ... and not further in the future than this

_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z
_MFMT_TIME = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})(\.[0-9]+)?")

_UNIX_TYPES = (
    (statmodule.S_ISLNK, "slink"),
    (statmodule.S_ISFIFO, "fifo"),
    (statmodule.S_ISSOCK, "socket"),
    (statmodule.S_ISCHR, "chr"),
    (statmodule.S_ISBLK, "blk"),
)


def _safe(text: str) -> str:
    return text.replace("\r", "?").replace("\n", "?").replace("\0", "?")


def _utc(mtime: float) -> datetime:
    """The UTC time of `mtime`, clamped to years 1970-9999 (NaN counts as the epoch)."""
    if math.isnan(mtime):
        mtime = 0.0
    return datetime.fromtimestamp(min(max(mtime, 0.0), _MAX_TIMESTAMP), tz=UTC)


def _permissions(entry: FileStat) -> str:
    text = statmodule.filemode(entry.mode)
    if entry.is_dir and text[0] != "d":
        return "d" + text[1:]
    if not entry.is_dir and text[0] in ("d", "?"):
        return "-" + text[1:]
    return text


def _list_date(mtime: float, now: float) -> str:
    when = _utc(mtime)
    month_day = f"{_MONTHS[when.month - 1]} {when.day:2d}"
    if now - _RECENT <= mtime <= now + _FUTURE_SLACK:
        return f"{month_day} {when.hour:02d}:{when.minute:02d}"
    return f"{month_day}  {when.year:4d}"


def format_list_line(entry: FileStat, now: float, owner: str = "ftp", group: str = "ftp") -> str:
    """One LIST line in the `ls -l` form, e.g.
    `drwxr-x---    2 ftp      ftp          4096 Nov 27 04:02 name`.

    The date shows HH:MM within 180 days before `now` (and at most a day after it),
    else the year.
    """
    return (
        f"{_permissions(entry)} {entry.nlink:4d} {_safe(owner):<8} {_safe(group):<8} "
        f"{entry.size:8d} {_list_date(entry.mtime, now)} {_safe(entry.name)}"
    )


def format_nlst_line(entry: FileStat) -> str:
    """One NLST line: the name."""
    return _safe(entry.name)


def format_mdtm(mtime: float) -> str:
    """A time as "YYYYMMDDHHMMSS" UTC (MDTM replies, the MLSx modify fact); seconds truncated."""
    return _utc(mtime).strftime("%Y%m%d%H%M%S")


def parse_mfmt_time(text: str) -> float:
    """Parse "YYYYMMDDHHMMSS[.sss]" (UTC, RFC 3659) into seconds since the epoch.

    Raises ValueError for anything else, including impossible dates.
    """
    match = _MFMT_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError("Time must be YYYYMMDDHHMMSS[.sss] in UTC")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ValueError("Time must be YYYYMMDDHHMMSS[.sss] in UTC: no such date") from None
    fraction = float("0" + match.group(7)) if match.group(7) else 0.0
    return when.timestamp() + fraction


def _mlsx_type(entry: FileStat, is_cwd: bool, is_parent: bool) -> str:
    if is_cwd:
        return "cdir"
    if is_parent:
        return "pdir"
    if entry.is_dir:
        return "dir"
    if entry.is_file:
        return "file"
    for test, name in _UNIX_TYPES:
        if test(entry.mode):
            return f"OS.unix={name}"
    return "OS.unix=other"


def _mlsx_perm(entry: FileStat, writable: bool) -> str:
    # RFC 3659 section 7.5.5, letters in alphabetical order.
    if entry.is_dir:
        return "cdeflmp" if writable else "el"
    return "adfrw" if writable else "r"


def format_mlsx_facts(
    entry: FileStat,
    facts: Sequence[str],
    *,
    is_cwd: bool = False,
    is_parent: bool = False,
    writable: bool = True,
    unique: str | None = None,
    name: str | None = None,
) -> str:
    """One MLSD line (RFC 3659): "type=file;size=123;modify=20261127040200;perm=adfrw; name".

    Facts come in the order of `facts`, unknown ones skipped; `size` is given for
    non-directories only and `unique` only when a value is passed. `name`
    replaces `entry.name` (MLST shows the path asked for).
    """
    values: list[str] = []
    for key in dict.fromkeys(fact.lower() for fact in facts):
        if key == "type":
            values.append(f"type={_mlsx_type(entry, is_cwd, is_parent)};")
        elif key == "size" and not entry.is_dir:
            values.append(f"size={entry.size};")
        elif key == "modify":
            values.append(f"modify={format_mdtm(entry.mtime)};")
        elif key == "perm":
            values.append(f"perm={_mlsx_perm(entry, writable)};")
        elif key == "unique" and unique is not None:
            values.append(f"unique={_safe(unique).replace(';', '?').replace(' ', '?')};")
        elif key == "unix.mode":
            values.append(f"unix.mode=0{statmodule.S_IMODE(entry.mode):03o};")
    return "".join(values) + " " + _safe(entry.name if name is None else name)


def format_mlst_reply_line(entry: FileStat, facts: Sequence[str], **options: Any) -> str:
    """The entry line inside MLST's 250- multi-line reply: a space, then the facts line.

    `options` are those of format_mlsx_facts.
    """
    return " " + format_mlsx_facts(entry, facts, **options)


def parse_opts_mlst(argument: str) -> tuple[str, ...]:
    """Facts asked for by "OPTS MLST type;size;": the known ones, in `MLST_FACTS` order.

    Case-insensitive; unknown facts are ignored; an empty list turns all facts off.
    """
    asked = {fact.strip().lower() for fact in argument.split(";")}
    return tuple(fact for fact in MLST_FACTS if fact in asked)


def format_opts_mlst_reply(enabled: Sequence[str]) -> str:
    """Text of the 200 reply to OPTS MLST: "MLST OPTS type;size;"."""
    return "MLST OPTS " + "".join(f"{fact};" for fact in enabled)


def format_feat_mlst(enabled: Sequence[str]) -> str:
    """The FEAT line "MLST type*;size*;...;" listing every fact, `*` on the enabled ones."""
    on = {fact.lower() for fact in enabled}
    return "MLST " + "".join(f"{fact}{'*' if fact in on else ''};" for fact in MLST_FACTS)
