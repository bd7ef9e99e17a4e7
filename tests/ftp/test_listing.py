"""Tests for securetransport.ftp.listing: LIST, NLST, MLSD/MLST facts, MDTM/MFMT times."""

from __future__ import annotations

import calendar
import ftplib
import re
import stat
from collections.abc import Callable, Iterator
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from securetransport.ftp.listing import (
    DEFAULT_FACTS,
    MLST_FACTS,
    format_feat_mlst,
    format_list_line,
    format_mdtm,
    format_mlst_reply_line,
    format_mlsx_facts,
    format_nlst_line,
    format_opts_mlst_reply,
    parse_mfmt_time,
    parse_opts_mlst,
)
from securetransport.vfs import FileStat

DAY = 86400
NOW = calendar.timegm((2026, 11, 27, 4, 2, 0))


def utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)[:6]))


def a_file(
    name: str = "report.txt", size: int = 123, mtime: float = NOW, mode: int = 0o640
) -> FileStat:
    return FileStat(name=name, is_dir=False, size=size, mtime=mtime, mode=stat.S_IFREG | mode)


def a_dir(name: str = "docs", mtime: float = NOW, mode: int = 0o750, nlink: int = 2) -> FileStat:
    return FileStat(
        name=name,
        is_dir=True,
        size=4096,
        mtime=mtime,
        mode=stat.S_IFDIR | mode,
        nlink=nlink,
        is_file=False,
    )


# What Unix-listing parsers (lftp, FileZilla, curl's wildcard matcher) expect of a LIST line.
LS_LINE = re.compile(
    r"^(?P<type>[-dlbcps])(?P<perm>(?:[-r][-w][-xsStT]){3})\s+(?P<nlink>\d+)\s+"
    r"(?P<owner>\S+)\s+(?P<group>\S+)\s+(?P<size>\d+)\s+"
    r"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+(?P<day>\d{1,2})\s+"
    r"(?P<when>\d{2}:\d{2}|\d{4}) (?P<name>.+)$"
)


class FakeFTP(ftplib.FTP):
    """ftplib's client with the wire replaced by canned lines: its own mlsd() parsing runs."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.canned = lines
        self.sent: list[str] = []

    def sendcmd(self, cmd: str) -> str:
        self.sent.append(cmd)
        return "200 OK"

    def retrlines(self, cmd: str, callback: Callable[[str], Any] | None = None) -> str:
        self.sent.append(cmd)
        assert callback is not None
        for line in self.canned:
            callback(line)
        return "226 Done"


def ftplib_mlsd(lines: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    return FakeFTP(lines).mlsd()


class ListLineTests(SynchronousTestCase):
    def test_exact_layout(self) -> None:
        self.assertEqual(
            format_list_line(a_dir("name"), NOW),
            "drwxr-x---    2 ftp      ftp          4096 Nov 27 04:02 name",
        )
        self.assertEqual(
            format_list_line(a_file("a b.txt", size=1234567890), NOW, owner="alice", group="g"),
            "-rw-r-----    1 alice    g        1234567890 Nov 27 04:02 a b.txt",
        )

    def test_dates(self) -> None:
        cases = [
            (NOW, "Nov 27 04:02"),
            (NOW - 179 * DAY, "Jun 1 04:02"),
            (NOW - 180 * DAY, "May 31 04:02"),
            (NOW - 181 * DAY, "May 30 2026"),
            (NOW + 12 * 3600, "Nov 27 16:02"),
            (NOW + DAY, "Nov 28 04:02"),
            (NOW + 2 * DAY, "Nov 29 2026"),
            (utc(2026, 11, 7, 9, 5, 0), "Nov 7 09:05"),
            (utc(2001, 1, 5, 23, 59, 0), "Jan 5 2001"),
            (utc(1999, 12, 31, 23, 59, 59), "Dec 31 1999"),
            (-5.0, "Jan 1 1970"),  # clamped, no error
            (float("inf"), "Dec 31 9999"),
            (float("nan"), "Jan 1 1970"),
        ]
        for mtime, expected in cases:
            with self.subTest(mtime=mtime):
                line = format_list_line(a_file(mtime=mtime), NOW)
                match = LS_LINE.match(line)
                assert match is not None, line
                date = " ".join(match.group("month", "day", "when"))
                self.assertEqual(date, expected)

    def test_date_columns(self) -> None:
        # Both forms are 12 characters wide; the day is space-padded as ls does.
        recent = format_list_line(a_file(mtime=utc(2026, 11, 7, 9, 5, 0)), NOW)
        old = format_list_line(a_file(mtime=utc(2001, 1, 5, 0, 0, 0)), NOW)
        self.assertTrue(recent.endswith(" Nov  7 09:05 report.txt"), recent)
        self.assertTrue(old.endswith(" Jan  5  2001 report.txt"), old)

    def test_every_month_is_english(self) -> None:
        months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
        for number, month in enumerate(months, start=1):
            with self.subTest(month=month):
                line = format_list_line(a_file(mtime=utc(2000, number, 15, 0, 0, 0)), NOW)
                self.assertIn(f" {month} 15  2000 ", line)

    def test_parsed_by_unix_listing_parsers(self) -> None:
        entries = [
            (a_file("plain.txt"), "-", "rw-r-----", "plain.txt"),
            (a_file("with  two spaces"), "-", "rw-r-----", "with  two spaces"),
            (a_file(" leading"), "-", "rw-r-----", " leading"),
            (a_file("caf\u00e9.txt", mode=0o4755), "-", "rwsr-xr-x", "caf\u00e9.txt"),
            (a_dir("sub dir", mode=0o1777), "d", "rwxrwxrwt", "sub dir"),
            (a_file("Jan 5 12:00 tricky"), "-", "rw-r-----", "Jan 5 12:00 tricky"),
        ]
        for entry, kind, perm, name in entries:
            with self.subTest(name=name):
                match = LS_LINE.match(format_list_line(entry, NOW))
                assert match is not None
                self.assertEqual(match.group("type", "perm", "name"), (kind, perm, name))
                self.assertEqual(int(match.group("size")), entry.size)
                self.assertEqual(int(match.group("nlink")), entry.nlink)

    def test_type_letter_follows_is_dir(self) -> None:
        bare_dir = FileStat("d", is_dir=True, size=0, mtime=NOW, mode=0o755, is_file=False)
        bare_file = FileStat("f", is_dir=False, size=0, mtime=NOW, mode=0o644)
        self.assertTrue(format_list_line(bare_dir, NOW).startswith("drwxr-xr-x "))
        self.assertTrue(format_list_line(bare_file, NOW).startswith("-rw-r--r-- "))

    def test_no_line_breaks_or_nul(self) -> None:
        entry = a_file("evil\r\n226 Transfer complete\0")
        for text in (
            format_list_line(entry, NOW, owner="o\nx", group="g\r"),
            format_nlst_line(entry),
            format_mlsx_facts(entry, DEFAULT_FACTS, unique="u\r\n"),
        ):
            with self.subTest(text=text):
                self.assertNotIn("\r", text)
                self.assertNotIn("\n", text)
                self.assertNotIn("\0", text)
                self.assertIn("evil??226 Transfer complete?", text)

    def test_nlst(self) -> None:
        self.assertEqual(format_nlst_line(a_file("x y.txt")), "x y.txt")
        self.assertEqual(format_nlst_line(a_dir("folder")), "folder")


class MlsxTests(SynchronousTestCase):
    def test_file_line(self) -> None:
        entry = a_file("report.txt", size=123, mtime=utc(2026, 11, 27, 4, 2, 0) + 0.75)
        self.assertEqual(
            format_mlsx_facts(entry, DEFAULT_FACTS, unique="803g1a2"),
            "type=file;size=123;modify=20261127040200;perm=adfrw;unique=803g1a2;"
            "unix.mode=0640; report.txt",
        )

    def test_types(self) -> None:
        cases: list[tuple[FileStat, dict[str, bool], str]] = [
            (a_file(), {}, "file"),
            (a_dir(), {}, "dir"),
            (a_dir("."), {"is_cwd": True}, "cdir"),
            (a_dir(".."), {"is_parent": True}, "pdir"),
            (
                FileStat("p", False, 0, NOW, stat.S_IFIFO | 0o600, is_file=False),
                {},
                "OS.unix=fifo",
            ),
            (
                FileStat("l", False, 0, NOW, stat.S_IFLNK | 0o777, is_file=False),
                {},
                "OS.unix=slink",
            ),
            (FileStat("?", False, 0, NOW, 0, is_file=False), {}, "OS.unix=other"),
        ]
        for entry, flags, expected in cases:
            with self.subTest(expected=expected):
                line = format_mlsx_facts(
                    entry,
                    ("type",),
                    is_cwd=flags.get("is_cwd", False),
                    is_parent=flags.get("is_parent", False),
                )
                self.assertEqual(line, f"type={expected}; {entry.name}")

    def test_perm_letters(self) -> None:
        cases = [
            (a_file(), True, "adfrw"),
            (a_file(), False, "r"),
            (a_dir(), True, "cdeflmp"),
            (a_dir(), False, "el"),
        ]
        for entry, writable, expected in cases:
            with self.subTest(is_dir=entry.is_dir, writable=writable):
                line = format_mlsx_facts(entry, ("perm",), writable=writable)
                self.assertEqual(line, f"perm={expected}; {entry.name}")
                # RFC 3659 section 7.5.5: only these letters exist.
                self.assertTrue(set(expected) <= set("acdeflmprw"))
        file_letters = set("adfrw") - set("r")
        self.assertFalse(file_letters & set(format_mlsx_facts(a_file(), ("perm",), writable=False)))

    def test_fact_selection_and_order(self) -> None:
        entry = a_file("f", size=5, mtime=utc(2020, 2, 29, 12, 0, 0), mode=0o600)
        cases = [
            (("size", "type"), "size=5;type=file; f"),
            (("unix.mode",), "unix.mode=0600; f"),
            (("UNIX.mode", "Modify"), "unix.mode=0600;modify=20200229120000; f"),
            (("type", "bogus", "size"), "type=file;size=5; f"),
            (("type", "type"), "type=file; f"),
            (("unique",), " f"),  # no unique value given: the fact is left out
            ((), " f"),
        ]
        for facts, expected in cases:
            with self.subTest(facts=facts):
                self.assertEqual(format_mlsx_facts(entry, facts), expected)

    def test_directory_has_no_size(self) -> None:
        self.assertEqual(format_mlsx_facts(a_dir("d"), ("type", "size")), "type=dir; d")

    def test_unix_mode(self) -> None:
        cases = [(0o640, "0640"), (0o4755, "04755"), (0o1777, "01777"), (0, "0000")]
        for mode, expected in cases:
            with self.subTest(mode=oct(mode)):
                self.assertEqual(
                    format_mlsx_facts(a_file("f", mode=mode), ("unix.mode",)),
                    f"unix.mode={expected}; f",
                )

    def test_name_override_for_mlst(self) -> None:
        line = format_mlst_reply_line(a_file("f.txt"), ("type",), name="/dir/f.txt")
        self.assertEqual(line, " type=file; /dir/f.txt")

    def test_mlst_line_starts_with_space(self) -> None:
        entry = a_file()
        facts_line = format_mlsx_facts(entry, DEFAULT_FACTS, writable=False, unique="1")
        self.assertEqual(
            format_mlst_reply_line(entry, DEFAULT_FACTS, writable=False, unique="1"),
            " " + facts_line,
        )

    def test_parsed_by_ftplib_mlsd(self) -> None:
        entries = [
            format_mlsx_facts(a_dir("."), DEFAULT_FACTS, is_cwd=True),
            format_mlsx_facts(a_dir(".."), DEFAULT_FACTS, is_parent=True),
            format_mlsx_facts(a_file("name with spaces.txt", size=42), DEFAULT_FACTS, unique="a1"),
            format_mlsx_facts(a_file(" leading space"), DEFAULT_FACTS),
            format_mlsx_facts(a_file("semi;colon=odd"), DEFAULT_FACTS),
            format_mlsx_facts(a_dir("caf\u00e9"), ("type", "perm")),
        ]
        parsed = list(ftplib_mlsd(entries))
        self.assertEqual(
            [name for name, _ in parsed],
            [".", "..", "name with spaces.txt", " leading space", "semi;colon=odd", "caf\u00e9"],
        )
        self.assertEqual(parsed[0][1]["type"], "cdir")
        self.assertEqual(parsed[1][1]["type"], "pdir")
        self.assertEqual(
            parsed[2][1],
            {
                "type": "file",
                "size": "42",
                "modify": format_mdtm(NOW),
                "perm": "adfrw",
                "unique": "a1",
                "unix.mode": "0640",
            },
        )
        self.assertEqual(parsed[5][1], {"type": "dir", "perm": "cdeflmp"})
        self.assertEqual(parse_mfmt_time(parsed[2][1]["modify"]), NOW)

    def test_ftplib_mlsd_sends_opts_we_parse(self) -> None:
        client = FakeFTP([])
        list(client.mlsd(facts=["type", "Size", "unix.mode"]))
        opts = client.sent[0]
        self.assertTrue(opts.startswith("OPTS MLST "))
        self.assertEqual(parse_opts_mlst(opts[len("OPTS MLST ") :]), ("type", "size", "unix.mode"))


class OptsAndFeatTests(SynchronousTestCase):
    def test_parse_opts_mlst(self) -> None:
        cases = [
            ("type;size;modify;", ("type", "size", "modify")),
            ("SIZE;Type;", ("type", "size")),
            ("modify;type", ("type", "modify")),
            ("type;foo;unix.mode;", ("type", "unix.mode")),
            ("unix.group;media-type;", ()),
            ("", ()),
            (";;", ()),
            ("type;size;modify;perm;unique;unix.mode;", MLST_FACTS),
            (" perm ; unique ;", ("perm", "unique")),
        ]
        for argument, expected in cases:
            with self.subTest(argument=argument):
                self.assertEqual(parse_opts_mlst(argument), expected)

    def test_defaults(self) -> None:
        self.assertEqual(MLST_FACTS, ("type", "size", "modify", "perm", "unique", "unix.mode"))
        self.assertEqual(DEFAULT_FACTS, MLST_FACTS)

    def test_feat(self) -> None:
        cases = [
            (DEFAULT_FACTS, "MLST type*;size*;modify*;perm*;unique*;unix.mode*;"),
            (("type",), "MLST type*;size;modify;perm;unique;unix.mode;"),
            (("size", "modify"), "MLST type;size*;modify*;perm;unique;unix.mode;"),
            ((), "MLST type;size;modify;perm;unique;unix.mode;"),
        ]
        for enabled, expected in cases:
            with self.subTest(enabled=enabled):
                self.assertEqual(format_feat_mlst(enabled), expected)

    def test_opts_reply(self) -> None:
        self.assertEqual(format_opts_mlst_reply(("type", "size")), "MLST OPTS type;size;")
        self.assertEqual(format_opts_mlst_reply(()), "MLST OPTS ")


class TimeTests(SynchronousTestCase):
    def test_parse_mfmt(self) -> None:
        cases = [
            ("20261127040200", NOW),
            ("19700101000000", 0.0),
            ("20000229235959", utc(2000, 2, 29, 23, 59, 59)),
            ("20261127040200.5", NOW + 0.5),
            ("20261127040200.250", NOW + 0.25),
            (" 20261127040200 ", NOW),
            ("19691231235959", -1.0),
        ]
        for text, expected in cases:
            with self.subTest(text=text):
                self.assertAlmostEqual(parse_mfmt_time(text), expected, places=6)

    def test_parse_mfmt_bad(self) -> None:
        for text in [
            "",
            "2026112704020",
            "202611270402000",
            "20261327040200",
            "20260230000000",
            "20261127250000",
            "20261127046000",
            "20261127040260",
            "00001127040200",
            "2026-11-27 04:02:00",
            "20261127040200.",
            "20261127040200.5x",
            "+2026112704020",
            "2026112704020\u0661",  # an Arabic-Indic digit
            "20261127040200 /file",
        ]:
            with self.subTest(text=text):
                self.assertRaises(ValueError, parse_mfmt_time, text)

    def test_format_mdtm(self) -> None:
        cases = [
            (NOW, "20261127040200"),
            (NOW + 0.999, "20261127040200"),
            (0.0, "19700101000000"),
            (-100.0, "19700101000000"),
            (utc(2038, 1, 19, 3, 14, 8), "20380119031408"),
        ]
        for mtime, expected in cases:
            with self.subTest(mtime=mtime):
                self.assertEqual(format_mdtm(mtime), expected)

    def test_round_trip(self) -> None:
        for text in ["20261127040200", "19991231235959", "20380119031408", "21000101000000"]:
            with self.subTest(text=text):
                self.assertEqual(format_mdtm(parse_mfmt_time(text)), text)
        for mtime in [0.0, 1.0, NOW, 2**31 + 7.0, 4102444800.0]:
            with self.subTest(mtime=mtime):
                self.assertEqual(parse_mfmt_time(format_mdtm(mtime)), mtime)
