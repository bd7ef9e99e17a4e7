"""The in-memory fakes (tests/fakes.py) are faithful: one contract, two implementations.

`FilesystemContract` runs against `LocalFilesystem` on a real temporary folder and against
`MemoryFilesystem`; `UserStoreContract` against `SQLiteUserStore` and `MemoryUserStore`.
A mixin base holds the tests, concrete classes provide `make_fs()` / `make_store()` and the
set-up hooks (what a test would do on disk). Everything is synchronous: `LocalFilesystem`
gets a thread pool and a reactor that run its jobs in place, so both sides run under
`SynchronousTestCase` and every Deferred has fired when the call returns.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from securetransport.auth import CertificateLogin, IFTPAvatar
from securetransport.passwords import PoolFull, verify_password
from securetransport.userstore import (
    Account,
    AsyncUserStore,
    IUserStore,
    SQLiteUserStore,
    UserStoreError,
)
from securetransport.vfs import (
    TEMPORARY_PREFIX,
    AlreadyExists,
    BadOffset,
    FilesystemError,
    IFilesystem,
    InvalidName,
    IReadHandle,
    IUpload,
    LocalFilesystem,
    NotFound,
    PermissionDenied,
    ReservedName,
)
from tests.fakes import (
    DEFAULT_REAL_ROOT,
    MemoryFilesystem,
    MemoryUserStore,
    SyncAsyncUserStore,
    SyncVerificationPool,
    cheap_password_hash,
    memory_account,
    memory_portal,
)

_E = TypeVar("_E", bound=BaseException)

FP_A = "ab" * 32
FP_B = "cd" * 32
FP_A_COLONS = ":".join(["AB"] * 32)


class InlineThreadPool:
    """`callInThreadWithCallback` run in place: deferToThreadPool fires before it returns."""

    def callInThreadWithCallback(  # noqa: N802 - ThreadPool's name
        self, on_result: Callable[[bool, Any], None], fn: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        try:
            result = fn(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class InlineReactor:
    def callFromThread(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:  # noqa: N802
        fn(*args, **kw)


# =================================================================================== filesystem


class FilesystemContract:
    """What the FTP engine relies on from an IFilesystem. Subclasses provide the hooks."""

    # hooks ------------------------------------------------------------------------------
    def make_fs(self, **options: Any) -> Any:
        raise NotImplementedError

    def put_file(self, path: str, data: bytes) -> None:
        """Create a file below the home as a test would on disk (folders on the way too)."""
        raise NotImplementedError

    def put_folder(self, path: str) -> None:
        raise NotImplementedError

    def put_symlink(self, path: str, target: str) -> None:
        raise NotImplementedError

    def absolute_inside(self, path: str) -> str:
        """An absolute symlink target naming `path` below the home."""
        raise NotImplementedError

    def absolute_outside(self) -> str:
        """An absolute symlink target naming a folder beside the home."""
        raise NotImplementedError

    def contents(self, path: str) -> bytes:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def raw_names(self, folder: str = "") -> list[str]:
        """Every name in a folder as stored, upload temporaries included, sorted."""
        raise NotImplementedError

    # helpers ----------------------------------------------------------------------------
    successResultOf: Callable[..., Any]  # noqa: N815 - from SynchronousTestCase
    failureResultOf: Callable[..., Failure]  # noqa: N815
    assertEqual: Callable[..., None]  # noqa: N815
    assertTrue: Callable[..., None]  # noqa: N815
    assertFalse: Callable[..., None]  # noqa: N815
    assertIs: Callable[..., None]  # noqa: N815
    assertIsInstance: Callable[..., None]  # noqa: N815
    assertRaises: Callable[..., Any]  # noqa: N815
    assertLess: Callable[..., None]  # noqa: N815
    upload_mode = "atomic"

    def setUp(self) -> None:
        self.fs = self.make_fs()

    def ok(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def fails(self, d: Deferred[Any], cls: type[_E], message: str | None = None) -> _E:
        """The exception `d` failed with: exactly `cls` (not a subclass), and `message`."""
        error = self.failureResultOf(d, cls).value
        self.assertIs(type(error), cls)
        if message is not None:
            self.assertEqual(str(error), message)
        return error  # type: ignore[return-value]

    def upload(self, path: str, data: bytes, fs: Any = None, **options: Any) -> tuple[Any, int]:
        upload = self.ok((fs or self.fs).open_upload(path, **options))
        for start in range(0, len(data), 4096):
            self.ok(upload.write(data[start : start + 4096]))
        return upload, self.ok(upload.commit())

    def names(self, path: str = "/") -> list[str]:
        return [entry.name for entry in self.ok(self.fs.listdir(path))]

    def temporaries(self, folder: str = "") -> list[str]:
        return [n for n in self.raw_names(folder) if n.startswith(TEMPORARY_PREFIX)]

    # interfaces -------------------------------------------------------------------------
    def test_provides_the_interfaces(self) -> None:
        self.assertTrue(verifyObject(IFilesystem, self.fs))
        self.put_file("f.txt", b"abc")
        handle = self.ok(self.fs.open_read("/f.txt"))
        self.assertTrue(verifyObject(IReadHandle, handle))
        handle.close()
        upload = self.ok(self.fs.open_upload("/g.txt"))
        self.assertTrue(verifyObject(IUpload, upload))
        self.ok(upload.abort())

    def test_bad_upload_mode(self) -> None:
        self.assertRaises(ValueError, self.make_fs, upload_mode="fast")

    # names ------------------------------------------------------------------------------
    def test_bad_paths_fail_before_any_work(self) -> None:
        self.fails(self.fs.stat("relative"), InvalidName, "Path is not absolute")
        self.fails(self.fs.stat("/a\nb"), InvalidName)
        self.fails(self.fs.mkdir("/a\0b"), InvalidName)
        self.fails(self.fs.open_upload("/x\\y"), InvalidName)
        error = self.fails(self.fs.stat(f"/{TEMPORARY_PREFIX}abc"), ReservedName)
        self.assertEqual(error.code, 550)
        self.assertEqual(self.fs.resolve("/a/b", "../../../c/./d/"), "/c/d")
        self.assertRaises(ReservedName, self.fs.resolve, "/", f"a/{TEMPORARY_PREFIX}1")

    # stat ------------------------------------------------------------------------------
    def test_stat_file_folder_and_home(self) -> None:
        before = time.time()
        self.put_file("docs/a.txt", b"hello")
        entry = self.ok(self.fs.stat("/docs/a.txt"))
        self.assertEqual((entry.name, entry.size, entry.is_file, entry.is_dir), ("a.txt", 5, 1, 0))
        self.assertTrue(stat.S_ISREG(entry.mode))
        self.assertLess(abs(entry.mtime - before), 5)
        folder = self.ok(self.fs.stat("/docs"))
        self.assertEqual((folder.name, folder.is_dir, folder.is_file), ("docs", True, False))
        self.assertTrue(stat.S_ISDIR(folder.mode))
        home = self.ok(self.fs.stat("/"))
        self.assertEqual((home.name, home.is_dir), ("/", True))

    def test_stat_missing(self) -> None:
        self.put_file("f.txt", b"x")
        self.fails(self.fs.stat("/nope"), NotFound, "No such file or folder")
        self.fails(self.fs.stat("/nope/deeper"), NotFound)
        self.fails(self.fs.stat("/f.txt/x"), FilesystemError, "Not a folder")

    def test_new_files_and_folders_follow_the_umask(self) -> None:
        self.upload("/f.bin", b"x")
        self.ok(self.fs.mkdir("/d"))
        self.assertEqual(stat.S_IMODE(self.ok(self.fs.stat("/f.bin")).mode), 0o640)
        self.assertEqual(stat.S_IMODE(self.ok(self.fs.stat("/d")).mode), 0o750)
        fs = self.make_fs(umask=0o077)
        self.upload("/g.bin", b"x", fs=fs)
        self.ok(fs.mkdir("/e"))
        self.assertEqual(stat.S_IMODE(self.ok(fs.stat("/g.bin")).mode), 0o600)
        self.assertEqual(stat.S_IMODE(self.ok(fs.stat("/e")).mode), 0o700)

    # symlinks and confinement -----------------------------------------------------------
    def test_symlinks_inside_the_home_are_followed(self) -> None:
        self.put_file("docs/a.txt", b"hello")
        self.put_symlink("rel", "docs/a.txt")
        self.put_symlink("abs", self.absolute_inside("docs"))
        self.put_symlink("docs/up", "../docs/a.txt")
        self.put_symlink("here", ".")
        self.assertEqual(self.ok(self.fs.stat("/rel")).size, 5)
        self.assertEqual(self.ok(self.fs.stat("/rel")).name, "rel")
        self.assertEqual(self.ok(self.fs.stat("/abs/a.txt")).size, 5)
        self.assertEqual(self.ok(self.fs.stat("/docs/up")).size, 5)
        self.assertTrue(self.ok(self.fs.stat("/here")).is_dir)
        self.assertEqual(self.names("/here/abs"), ["a.txt", "up"])
        self.assertEqual(
            self.ok(self.fs.digest("/abs/up", 0, None)),
            self.ok(self.fs.digest("/docs/a.txt", 0, None)),
        )

    def test_symlinks_leading_out_are_not_found(self) -> None:
        self.put_symlink("out", "../outside")
        self.put_symlink("absout", self.absolute_outside())
        self.put_symlink("loop", "loop")
        self.put_symlink("deep", "docs/../../outside")
        self.put_folder("docs")
        for path in ("/out", "/out/secret.txt", "/absout/secret.txt", "/loop", "/deep/secret.txt"):
            self.fails(self.fs.stat(path), NotFound)
            self.fails(self.fs.open_read(path), NotFound)
            self.fails(self.fs.listdir(path), NotFound)
        self.fails(self.fs.open_upload("/out/new.txt"), NotFound)
        self.fails(self.fs.mkdir("/absout/new"), NotFound)
        self.fails(self.fs.remove("/out"), NotFound)
        self.fails(self.fs.rename("/absout", "/mine"), NotFound)
        self.fails(self.fs.set_mtime("/out", 1.0), NotFound)
        self.fails(self.fs.digest("/absout/secret.txt", 0, None), NotFound)
        self.assertEqual(self.names(), ["docs"])  # links out, loops: not listed
        self.assertEqual(sorted(self.raw_names()), ["absout", "deep", "docs", "loop", "out"])

    def test_remove_and_rename_act_on_the_link_itself(self) -> None:
        self.put_file("a.txt", b"A")
        self.put_symlink("link", "a.txt")
        self.ok(self.fs.rename("/link", "/moved"))
        self.assertEqual(self.ok(self.fs.stat("/moved")).size, 1)
        self.ok(self.fs.remove("/moved"))
        self.assertEqual(self.names(), ["a.txt"])
        self.assertEqual(self.contents("a.txt"), b"A")

    def test_upload_through_a_dangling_link_inside_creates_its_target(self) -> None:
        self.put_symlink("later", "made.txt")
        self.assertEqual(self.names(), [])
        self.upload("/later", b"via link")
        self.assertEqual(self.contents("made.txt"), b"via link")
        self.assertEqual(self.names(), ["later", "made.txt"])

    # listdir ----------------------------------------------------------------------------
    def test_listdir_sorted_and_filtered(self) -> None:
        for name in ("b.txt", "a.txt", "Z.txt", "\u00e9t\u00e9.txt"):
            self.put_file(name, b"x")
        self.put_folder("sub")
        self.put_file("bad\nname", b"x")
        self.put_file("bad\udcffutf8", b"x")  # a name that is not UTF-8 on disk
        self.put_file(f"{TEMPORARY_PREFIX}0123", b"partial")
        self.put_symlink("dangling", "nothing-here")
        self.put_symlink("to-a", "a.txt")
        entries = self.ok(self.fs.listdir("/"))
        self.assertEqual(
            [e.name for e in entries],
            ["Z.txt", "a.txt", "b.txt", "sub", "to-a", "\u00e9t\u00e9.txt"],
        )
        self.assertEqual([e.is_dir for e in entries], [False, False, False, True, False, False])
        self.assertEqual(entries[4].size, 1)

    def test_listdir_of_a_file_or_nothing(self) -> None:
        self.put_file("f.txt", b"x")
        self.fails(self.fs.listdir("/f.txt"), FilesystemError, "Not a folder")
        self.fails(self.fs.listdir("/nope"), NotFound)
        self.assertEqual(self.names("/"), ["f.txt"])

    # reading ------------------------------------------------------------------------------
    def test_read_ranges(self) -> None:
        self.put_file("d.bin", b"0123456789")
        handle = self.ok(self.fs.open_read("/d.bin"))
        self.assertEqual(handle.size, 10)
        self.assertEqual(self.ok(handle.read(0, 4)), b"0123")
        self.assertEqual(self.ok(handle.read(8, 100)), b"89")
        self.assertEqual(self.ok(handle.read(10, 5)), b"")
        self.assertEqual(self.ok(handle.read(50, 5)), b"")
        self.fails(handle.read(-1, 5), BadOffset)
        handle.close()
        self.fails(handle.read(0, 4), FilesystemError, "File is closed")
        handle.close()

    def test_open_read_of_folders_and_nothing(self) -> None:
        self.put_folder("d")
        self.fails(self.fs.open_read("/d"), FilesystemError, "Is a folder")
        self.fails(self.fs.open_read("/"), FilesystemError, "Is a folder")
        self.fails(self.fs.open_read("/nope"), NotFound)

    def test_an_open_handle_keeps_the_version_it_opened(self) -> None:
        self.put_file("v.txt", b"version one")
        handle = self.ok(self.fs.open_read("/v.txt"))
        self.upload("/v.txt", b"version two, longer")
        self.assertEqual(self.ok(handle.read(0, 100)), b"version one")
        handle.close()
        self.assertEqual(self.contents("v.txt"), b"version two, longer")

    def test_digest(self) -> None:
        import hashlib

        self.put_file("d.bin", b"0123456789")
        sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
        self.assertEqual(self.ok(self.fs.digest("/d.bin", 0, None)), sha(b"0123456789"))
        self.assertEqual(self.ok(self.fs.digest("/d.bin", 2, 5)), sha(b"234"))
        self.assertEqual(self.ok(self.fs.digest("/d.bin", 4, 99)), sha(b"456789"))
        self.assertEqual(self.ok(self.fs.digest("/d.bin", 10, None)), sha(b""))
        self.fails(self.fs.digest("/d.bin", 11, None), BadOffset)
        self.fails(self.fs.digest("/d.bin", 5, 4), BadOffset)
        self.fails(self.fs.digest("/d.bin", -1, None), BadOffset)
        self.fails(self.fs.digest("/", 0, None), FilesystemError, "Is a folder")
        self.fails(self.fs.digest("/nope", 0, None), NotFound)

    # folders ----------------------------------------------------------------------------
    def test_mkdir(self) -> None:
        self.put_file("f.txt", b"x")
        self.assertEqual(self.ok(self.fs.mkdir("/d")), None)
        self.ok(self.fs.mkdir("/d/e"))
        self.assertTrue(self.ok(self.fs.stat("/d/e")).is_dir)
        exists = "File or folder already exists"
        self.fails(self.fs.mkdir("/d"), AlreadyExists, exists)
        self.fails(self.fs.mkdir("/f.txt"), AlreadyExists, exists)
        self.fails(self.fs.mkdir("/"), AlreadyExists, exists)
        self.fails(self.fs.mkdir("/x/y"), NotFound)
        self.fails(self.fs.mkdir("/f.txt/y"), FilesystemError, "Not a folder")
        self.put_symlink("link", "d")
        self.ok(self.fs.mkdir("/link/through"))
        self.assertTrue(self.exists("d/through"))
        self.fails(self.fs.mkdir("/link"), AlreadyExists)

    def test_rmdir(self) -> None:
        self.put_file("full/f.txt", b"x")
        self.put_folder("empty")
        self.put_symlink("link", "empty")
        self.ok(self.fs.rmdir("/empty/"))
        self.assertFalse(self.exists("empty"))
        self.fails(self.fs.rmdir("/full"), FilesystemError, "Folder not empty")
        self.fails(self.fs.rmdir("/full/f.txt"), FilesystemError, "Not a folder")
        self.fails(self.fs.rmdir("/link"), FilesystemError, "Not a folder")
        self.fails(self.fs.rmdir("/nope"), NotFound)
        self.fails(self.fs.rmdir("/"), PermissionDenied, "Cannot remove the home folder")
        self.assertTrue(self.exists("full/f.txt"))

    # remove and rename ------------------------------------------------------------------
    def test_remove(self) -> None:
        self.put_file("d/f.txt", b"x")
        self.ok(self.fs.remove("/d/f.txt"))
        self.assertEqual(self.names("/d"), [])
        self.fails(self.fs.remove("/d/f.txt"), NotFound)
        self.fails(self.fs.remove("/d"), FilesystemError, "Is a folder")
        self.fails(self.fs.remove("/"), FilesystemError, "Is a folder")

    def test_rename_files(self) -> None:
        self.put_file("a.txt", b"A")
        self.put_file("b.txt", b"B")
        self.put_folder("d")
        self.ok(self.fs.rename("/a.txt", "/d/c.txt"))
        self.assertEqual(self.contents("d/c.txt"), b"A")
        self.ok(self.fs.rename("/b.txt", "/d/c.txt"))  # replaces
        self.assertEqual(self.contents("d/c.txt"), b"B")
        self.assertEqual(self.names(), ["d"])
        self.ok(self.fs.rename("/d/c.txt", "/d/c.txt"))  # onto itself: nothing happens
        self.assertEqual(self.contents("d/c.txt"), b"B")
        self.put_folder("e")
        self.put_file("full/x", b"x")
        self.fails(self.fs.rename("/d/c.txt", "/e"), FilesystemError, "Is a folder")
        self.fails(self.fs.rename("/d/c.txt", "/full"), FilesystemError, "Is a folder")
        self.fails(self.fs.rename("/d/c.txt", "/d"), FilesystemError, "Folder not empty")
        self.fails(self.fs.rename("/nope", "/x"), NotFound)
        self.fails(self.fs.rename("/d/c.txt", "/nope/x"), NotFound)
        self.fails(self.fs.rename("/", "/x"), PermissionDenied, "Cannot rename the home folder")
        self.fails(self.fs.rename("/d/c.txt", "/"), AlreadyExists)
        self.assertEqual(self.names("/d"), ["c.txt"])

    def test_rename_folders(self) -> None:
        self.put_file("a/inner/f.txt", b"F")
        self.put_file("file.txt", b"x")
        self.put_folder("empty")
        self.put_file("full/g.txt", b"G")
        self.fails(self.fs.rename("/a", "/file.txt"), FilesystemError, "Not a folder")
        self.fails(self.fs.rename("/a", "/full"), FilesystemError, "Folder not empty")
        self.fails(
            self.fs.rename("/a", "/a/inner/a"),
            FilesystemError,
            "Invalid argument (a folder cannot move into itself)",
        )
        self.fails(self.fs.rename("/a/inner", "/a"), FilesystemError, "Folder not empty")
        self.ok(self.fs.rename("/a", "/empty"))  # an empty folder is replaced
        self.assertEqual(self.contents("empty/inner/f.txt"), b"F")
        self.assertEqual(self.names(), ["empty", "file.txt", "full"])

    def test_set_mtime(self) -> None:
        self.put_file("f.txt", b"x")
        self.put_folder("d")
        self.ok(self.fs.set_mtime("/f.txt", 1_000_000_000.0))
        self.ok(self.fs.set_mtime("/d", 1_200_000_000.0))
        self.assertEqual(self.ok(self.fs.stat("/f.txt")).mtime, 1_000_000_000.0)
        self.assertEqual(self.ok(self.fs.stat("/d")).mtime, 1_200_000_000.0)
        self.fails(self.fs.set_mtime("/nope", 1.0), NotFound)

    def test_read_only(self) -> None:
        self.put_file("f.txt", b"x")
        self.put_folder("d")
        fs = self.make_fs(read_only=True)
        self.assertTrue(fs.read_only)
        self.assertFalse(self.fs.read_only)
        message = "Permission denied: read-only account"
        for d in (
            fs.open_upload("/new.txt"),
            fs.open_upload("/f.txt", append=True),
            fs.mkdir("/e"),
            fs.rmdir("/d"),
            fs.remove("/f.txt"),
            fs.rename("/f.txt", "/g.txt"),
            fs.set_mtime("/f.txt", 1.0),
            fs.mkdir("/bad\nname"),  # refused before the name is looked at
        ):
            self.assertEqual(self.fails(d, PermissionDenied, message).code, 550)
        self.assertEqual(self.ok(fs.stat("/f.txt")).size, 1)
        self.assertEqual([e.name for e in self.ok(fs.listdir("/"))], ["d", "f.txt"])
        self.ok(fs.digest("/f.txt", 0, None))
        self.ok(fs.open_read("/f.txt")).close()

    # uploads, both modes ------------------------------------------------------------------
    def test_upload_refusals(self) -> None:
        self.put_file("f.txt", b"0123")
        self.put_folder("d")
        self.fails(self.fs.open_upload("/d"), FilesystemError, "Is a folder")
        self.fails(self.fs.open_upload("/"), FilesystemError, "Is a folder")
        self.fails(self.fs.open_upload("/nope/x"), NotFound)
        self.fails(self.fs.open_upload("/f.txt/x"), FilesystemError, "Not a folder")
        self.fails(self.fs.open_upload("/f.txt", offset=-1), BadOffset)
        self.fails(self.fs.open_upload("/f.txt", offset=5), BadOffset)
        self.fails(self.fs.open_upload("/new.txt", offset=1), BadOffset)
        self.fails(self.fs.open_upload("/x", offset=1, unique=True), BadOffset)
        self.assertEqual(self.raw_names(), ["d", "f.txt"])
        self.assertEqual(self.contents("f.txt"), b"0123")

    def test_upload_new_file(self) -> None:
        upload, received = self.upload("/d.bin", b"x" * 10000)
        self.assertEqual(received, 10000)
        self.assertEqual(upload.path, "/d.bin")
        self.assertEqual(self.contents("d.bin"), b"x" * 10000)
        self.assertEqual(self.raw_names(), ["d.bin"])

    def test_upload_rest_and_append(self) -> None:
        self.put_file("f.bin", b"0123456789")
        _, received = self.upload("/f.bin", b"abc", offset=4)
        self.assertEqual(received, 3)
        self.assertEqual(self.contents("f.bin"), b"0123abc")
        _, received = self.upload("/f.bin", b"XY", append=True)
        self.assertEqual(received, 2)
        self.assertEqual(self.contents("f.bin"), b"0123abcXY")
        self.upload("/f.bin", b"!", offset=9)  # REST at the very end
        self.assertEqual(self.contents("f.bin"), b"0123abcXY!")
        self.upload("/g.bin", b"new", append=True)  # APPE to a new name
        self.assertEqual(self.contents("g.bin"), b"new")
        self.upload("/f.bin", b"fresh")  # STOR replaces the whole file
        self.assertEqual(self.contents("f.bin"), b"fresh")
        self.assertEqual(self.temporaries(), [])

    def test_finished_uploads_refuse_more(self) -> None:
        upload, _ = self.upload("/f.bin", b"data")
        self.fails(upload.write(b"more"), FilesystemError, "Upload already finished")
        self.fails(upload.commit(), FilesystemError, "Upload already finished")
        self.assertEqual(self.ok(upload.abort()), None)
        self.assertEqual(self.contents("f.bin"), b"data")
        aborted = self.ok(self.fs.open_upload("/g.bin"))
        self.ok(aborted.abort())
        self.ok(aborted.abort())
        self.fails(aborted.write(b"x"), FilesystemError, "Upload already finished")
        self.fails(aborted.commit(), FilesystemError, "Upload already finished")

    def test_unique_names(self) -> None:
        self.put_file("u.txt", b"taken")
        self.put_file("u.txt.1", b"taken too")
        first, _ = self.upload("/u.txt", b"one", unique=True)
        second, _ = self.upload("/u.txt", b"two", unique=True)
        fresh, _ = self.upload("/v.txt", b"three", unique=True)
        self.assertEqual((first.path, second.path, fresh.path), ("/u.txt.2", "/u.txt.3", "/v.txt"))
        self.assertEqual(self.contents("u.txt.2"), b"one")
        self.assertEqual(self.contents("u.txt.3"), b"two")
        self.assertEqual(self.contents("u.txt"), b"taken")
        self.assertEqual(self.temporaries(), [])


class AtomicUploadContract(FilesystemContract):
    """upload_mode = "atomic": a hidden temporary, renamed over the target at commit."""

    def test_new_file_appears_only_at_commit(self) -> None:
        upload = self.ok(self.fs.open_upload("/new.bin"))
        self.ok(upload.write(b"partial"))
        self.assertEqual(self.names(), [])
        self.assertEqual(len(self.temporaries()), 1)
        self.fails(self.fs.stat("/new.bin"), NotFound)
        self.assertEqual(self.ok(upload.commit()), 7)
        self.assertEqual(self.raw_names(), ["new.bin"])
        self.assertEqual(self.contents("new.bin"), b"partial")

    def test_abort_keeps_the_previous_version(self) -> None:
        self.put_file("keep.bin", b"previous")
        for options in ({}, {"offset": 3}, {"append": True}):
            upload = self.ok(self.fs.open_upload("/keep.bin", **options))
            self.ok(upload.write(b"NEW DATA"))
            self.assertEqual(self.contents("keep.bin"), b"previous")
            self.ok(upload.abort())
            self.assertEqual(self.raw_names(), ["keep.bin"], options)
            self.assertEqual(self.contents("keep.bin"), b"previous")
        upload = self.ok(self.fs.open_upload("/gone.bin"))
        self.ok(upload.write(b"x"))
        self.ok(upload.abort())
        self.assertEqual(self.raw_names(), ["keep.bin"])

    def test_unique_reserves_the_name_until_commit(self) -> None:
        upload = self.ok(self.fs.open_upload("/s.txt", unique=True))
        self.ok(upload.write(b"data"))
        self.assertEqual(self.ok(self.fs.stat("/s.txt")).size, 0)  # the reserved name
        self.assertEqual(len(self.temporaries()), 1)
        other = self.ok(self.fs.open_upload("/s.txt", unique=True))
        self.assertEqual(other.path, "/s.txt.1")
        self.ok(other.abort())
        self.assertFalse(self.exists("s.txt.1"))
        self.assertEqual(self.ok(upload.commit()), 4)
        self.assertEqual(self.contents("s.txt"), b"data")
        self.assertEqual(self.raw_names(), ["s.txt"])

    def test_rmdir_of_a_folder_with_an_upload_in_progress(self) -> None:
        self.put_folder("busy")
        upload = self.ok(self.fs.open_upload("/busy/new.bin"))
        self.assertEqual(self.names("/busy"), [])
        self.fails(self.fs.rmdir("/busy"), FilesystemError, "Folder not empty")
        self.ok(upload.abort())
        self.ok(self.fs.rmdir("/busy"))

    def test_commit_over_a_folder_made_meanwhile(self) -> None:
        upload = self.ok(self.fs.open_upload("/late"))
        self.ok(upload.write(b"data"))
        self.ok(self.fs.mkdir("/late"))
        self.fails(upload.commit(), FilesystemError, "Is a folder")
        self.assertEqual(self.raw_names(), ["late"])
        self.assertTrue(self.ok(self.fs.stat("/late")).is_dir)

    def test_upload_lands_in_its_folder_even_if_renamed_meanwhile(self) -> None:
        self.put_folder("a")
        upload = self.ok(self.fs.open_upload("/a/f.txt"))
        self.ok(upload.write(b"data"))
        self.ok(self.fs.rename("/a", "/b"))
        self.ok(upload.commit())
        self.assertEqual(self.contents("b/f.txt"), b"data")


class ResumableUploadContract(FilesystemContract):
    """upload_mode = "resumable": new names, REST and APPE write in place."""

    upload_mode = "resumable"

    def test_new_name_is_written_in_place_and_kept_on_abort(self) -> None:
        upload = self.ok(self.fs.open_upload("/part.bin"))
        self.ok(upload.write(b"first half"))
        self.assertEqual(self.raw_names(), ["part.bin"])  # no temporary: the file itself
        self.ok(upload.abort())
        self.assertEqual(self.contents("part.bin"), b"first half")
        _, received = self.upload("/part.bin", b" second", offset=10)
        self.assertEqual(received, 7)
        self.assertEqual(self.contents("part.bin"), b"first half second")

    def test_rest_truncates_then_writes_in_place(self) -> None:
        self.put_file("f.bin", b"0123456789")
        upload = self.ok(self.fs.open_upload("/f.bin", offset=4))
        self.assertEqual(self.contents("f.bin"), b"0123")
        self.ok(upload.write(b"ab"))
        self.ok(upload.abort())
        self.assertEqual(self.contents("f.bin"), b"0123ab")
        upload = self.ok(self.fs.open_upload("/f.bin", append=True))
        self.ok(upload.write(b"!"))
        self.assertEqual(self.raw_names(), ["f.bin"])
        self.assertEqual(self.ok(upload.commit()), 1)
        self.assertEqual(self.contents("f.bin"), b"0123ab!")

    def test_overwrite_from_zero_still_goes_through_a_temporary(self) -> None:
        self.put_file("keep.bin", b"complete")
        upload = self.ok(self.fs.open_upload("/keep.bin"))
        self.ok(upload.write(b"new"))
        self.assertEqual(len(self.temporaries()), 1)
        self.assertEqual(self.contents("keep.bin"), b"complete")
        self.ok(upload.abort())
        self.assertEqual(self.raw_names(), ["keep.bin"])
        self.assertEqual(self.contents("keep.bin"), b"complete")

    def test_unique_writes_in_place(self) -> None:
        upload = self.ok(self.fs.open_upload("/u.txt", unique=True))
        self.ok(upload.write(b"some"))
        self.assertEqual(self.temporaries(), [])
        self.ok(upload.abort())
        self.assertEqual(self.contents("u.txt"), b"some")


# --- the two implementations ----------------------------------------------------------------


class _LocalHooks:
    """LocalFilesystem on a temporary folder, its pool and reactor run in place."""

    upload_mode: str
    mktemp: Callable[[], str]

    def make_fs(self, **options: Any) -> LocalFilesystem:
        if not hasattr(self, "home"):
            base = Path(self.mktemp()).absolute()
            self.home = base / "home"
            self.home.mkdir(parents=True)
            (base / "outside").mkdir()
            (base / "outside" / "secret.txt").write_bytes(b"secret")
            self.home = Path(os.path.realpath(self.home))
        options.setdefault("upload_mode", self.upload_mode)
        return LocalFilesystem(
            self.home,
            threadpool=InlineThreadPool(),  # type: ignore[arg-type]
            reactor=InlineReactor(),  # type: ignore[arg-type]
            **options,
        )

    def _path(self, path: str) -> bytes:
        return os.fsencode(self.home / path)

    def put_file(self, path: str, data: bytes) -> None:
        target = self._path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(data)

    def put_folder(self, path: str) -> None:
        os.makedirs(self._path(path), exist_ok=True)

    def put_symlink(self, path: str, target: str) -> None:
        os.symlink(target, self._path(path))

    def absolute_inside(self, path: str) -> str:
        return str(self.home / path)

    def absolute_outside(self) -> str:
        return str(self.home.parent / "outside")

    def contents(self, path: str) -> bytes:
        with open(self._path(path), "rb") as handle:
            return handle.read()

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def raw_names(self, folder: str = "") -> list[str]:
        return sorted(os.fsdecode(n) for n in os.listdir(self._path(folder)))


class _MemoryHooks:
    upload_mode: str
    fs: MemoryFilesystem

    def make_fs(self, **options: Any) -> MemoryFilesystem:
        options.setdefault("upload_mode", self.upload_mode)
        fs = MemoryFilesystem(**options)
        if hasattr(self, "fs"):
            fs.home = self.fs.home  # another view of the same home
        return fs

    def put_file(self, path: str, data: bytes) -> None:
        self.fs.write_file(path, data)

    def put_folder(self, path: str) -> None:
        self.fs.make_folders(path)

    def put_symlink(self, path: str, target: str) -> None:
        self.fs.symlink(path, target)

    def absolute_inside(self, path: str) -> str:
        return f"{DEFAULT_REAL_ROOT}/{path}"

    def absolute_outside(self) -> str:
        return DEFAULT_REAL_ROOT.rsplit("/", 1)[0] + "/outside"

    def contents(self, path: str) -> bytes:
        return self.fs.read_file(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def raw_names(self, folder: str = "") -> list[str]:
        return self.fs.raw_names(folder)


class LocalAtomicContractTests(_LocalHooks, AtomicUploadContract, SynchronousTestCase):
    pass


class MemoryAtomicContractTests(_MemoryHooks, AtomicUploadContract, SynchronousTestCase):
    pass


class LocalResumableContractTests(_LocalHooks, ResumableUploadContract, SynchronousTestCase):
    pass


class MemoryResumableContractTests(_MemoryHooks, ResumableUploadContract, SynchronousTestCase):
    pass


class MemoryFilesystemOnlyTests(SynchronousTestCase):
    """What only the fake has: its clock, a handle without a descriptor, write failures."""

    def test_clock_gives_mtimes(self) -> None:
        now = [1000.0]
        fs = MemoryFilesystem(clock=lambda: now[0])
        upload = self.successResultOf(fs.open_upload("/f"))
        now[0] = 2000.0
        self.successResultOf(upload.write(b"x"))
        self.successResultOf(upload.commit())
        self.assertEqual(self.successResultOf(fs.stat("/f")).mtime, 2000.0)
        self.assertEqual(self.successResultOf(fs.open_read("/f")).fileno(), -1)

    def test_injected_write_failure(self) -> None:
        fs = MemoryFilesystem()
        fs.write_file("f", b"old")
        upload: Any = self.successResultOf(fs.open_upload("/f"))
        upload.failure = FilesystemError("disk on fire")
        self.failureResultOf(upload.write(b"x"), FilesystemError)
        self.failureResultOf(upload.commit(), FilesystemError)
        self.assertEqual(fs.read_file("f"), b"old")
        self.assertEqual(fs.raw_names(), ["f"])


# =================================================================================== user store


def account(name: str = "alice", **fields: Any) -> Account:
    return Account(name=name, password_hash="$argon2id$stored", **fields)


class UserStoreContract:
    """What the engine and the CLI rely on from an IUserStore."""

    def make_store(self) -> Any:
        raise NotImplementedError

    successResultOf: Callable[..., Any]  # noqa: N815
    failureResultOf: Callable[..., Failure]  # noqa: N815
    assertEqual: Callable[..., None]  # noqa: N815
    assertIsNone: Callable[..., None]  # noqa: N815
    assertIs: Callable[..., None]  # noqa: N815
    assertTrue: Callable[..., None]  # noqa: N815
    assertFalse: Callable[..., None]  # noqa: N815
    assertRaises: Callable[..., Any]  # noqa: N815

    def setUp(self) -> None:
        self.store = self.make_store()

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IUserStore, self.store))

    def test_round_trip(self) -> None:
        full = Account(
            name="alice",
            password_hash="$argon2id$v=19$stored",
            groups=("staff", "ops"),
            home="shared/alice",
            certificates=(FP_B, FP_A),
            read_only=True,
            enabled=False,
        )
        self.store.add(full)
        self.assertEqual(self.store.get("alice"), full)
        bare = Account(name="bob")
        self.store.add(bare)
        self.assertEqual(self.store.get("bob"), bare)
        self.assertIsNone(self.store.get("carol"))
        self.assertIsNone(self.store.get("Alice"))  # names are case-sensitive

    def test_add_normalizes(self) -> None:
        self.store.add(
            account(groups=("a", "b", "a"), home="x/./y/", certificates=(FP_A_COLONS, FP_A))
        )
        stored = self.store.get("alice")
        self.assertEqual(stored.groups, ("a", "b"))
        self.assertEqual(stored.home, "x/y")
        self.assertEqual(stored.certificates, (FP_A,))
        self.store.add(account("bob", home="."))
        self.assertEqual(self.store.get("bob").home, "")
        self.assertEqual(self.store.get("bob").home_folder, "bob")

    def test_bad_fields_are_refused(self) -> None:
        for bad in (
            account(""),
            account(".hidden"),
            account("with space"),
            account("x" * 65),
            account(certificates=("not-a-fingerprint",)),
            account(home="/absolute"),
            account(home="a/../../b"),
            account(home="nul\0"),
            account(groups=("",)),
        ):
            self.assertRaises(UserStoreError, self.store.add, bad)
        self.assertEqual(self.store.list(), [])
        self.store.add(account("a" * 64))
        self.store.add(account("a.b_c@d+e-f"))
        self.assertEqual(len(self.store.list()), 2)

    def test_duplicate_add_and_unknown_update(self) -> None:
        self.store.add(account())
        error = self.assertRaises(UserStoreError, self.store.add, account(read_only=True))
        self.assertEqual(str(error), "account exists: alice")
        self.assertFalse(self.store.get("alice").read_only)
        error = self.assertRaises(UserStoreError, self.store.update, account("bob"))
        self.assertEqual(str(error), "no such account: bob")
        self.assertIsNone(self.store.get("bob"))

    def test_update_replaces_everything(self) -> None:
        self.store.add(account(groups=("a",), certificates=(FP_A,)))
        changed = Account(
            name="alice", password_hash=None, groups=("c", "b"), certificates=(FP_B,), home="h"
        )
        self.store.update(changed)
        self.assertEqual(self.store.get("alice"), changed)
        self.assertEqual(self.store.find_by_fingerprint(FP_A), [])
        self.assertRaises(UserStoreError, self.store.update, account(home="/x"))
        self.assertEqual(self.store.get("alice"), changed)

    def test_list_sorted(self) -> None:
        for name in ("carol", "Bob", "alice", "bob"):
            self.store.add(account(name))
        self.assertEqual([a.name for a in self.store.list()], ["Bob", "alice", "bob", "carol"])

    def test_remove(self) -> None:
        self.store.add(account(certificates=(FP_A,)))
        self.assertIs(self.store.remove("alice"), True)
        self.assertIs(self.store.remove("alice"), False)
        self.assertIsNone(self.store.get("alice"))
        self.assertEqual(self.store.find_by_fingerprint(FP_A), [])
        self.store.add(account())  # the name is free again
        self.assertEqual(self.store.get("alice").certificates, ())

    def test_find_by_fingerprint(self) -> None:
        self.store.add(account("bob", certificates=(FP_A,)))
        self.store.add(account("alice", certificates=(FP_B, FP_A), enabled=False))
        self.store.add(account("carol"))
        self.assertEqual(self.store.find_by_fingerprint(FP_A), ["alice", "bob"])
        self.assertEqual(self.store.find_by_fingerprint(FP_A_COLONS), ["alice", "bob"])
        self.assertEqual(self.store.find_by_fingerprint(FP_A.upper()), ["alice", "bob"])
        self.assertEqual(self.store.find_by_fingerprint(FP_B), ["alice"])
        self.assertEqual(self.store.find_by_fingerprint("ef" * 32), [])
        self.assertEqual(self.store.find_by_fingerprint("garbage"), [])

    def test_closed_store_refuses(self) -> None:
        self.store.add(account())
        self.store.close()
        self.store.close()
        for call in (
            lambda: self.store.get("alice"),
            self.store.list,
            lambda: self.store.add(account("bob")),
            lambda: self.store.update(account()),
            lambda: self.store.remove("alice"),
            lambda: self.store.find_by_fingerprint(FP_A),
        ):
            self.assertRaises(UserStoreError, call)

    def test_async_wrapper_fires_at_once(self) -> None:
        users = SyncAsyncUserStore(self.store)
        self.assertTrue(isinstance(users, AsyncUserStore))
        self.assertIsNone(self.successResultOf(users.add(account(certificates=(FP_A,)))))
        self.assertEqual(self.successResultOf(users.get("alice")).name, "alice")
        self.assertEqual([a.name for a in self.successResultOf(users.list())], ["alice"])
        self.assertEqual(self.successResultOf(users.find_by_fingerprint(FP_A)), ["alice"])
        self.assertIs(self.successResultOf(users.pinned_by_any_account(FP_A)), True)
        self.assertIs(self.successResultOf(users.pinned_by_any_account(FP_B)), False)
        self.assertIs(self.successResultOf(users.pinned_by_any_account(None)), False)
        seen = self.successResultOf(users.with_account("alice", lambda a: a and a.read_only))
        self.assertIs(seen, False)
        self.assertIsNone(self.successResultOf(users.update(account(read_only=True))))
        self.assertIs(self.successResultOf(users.remove("alice")), True)
        self.failureResultOf(users.add(account("bad name")), UserStoreError)


class SQLiteUserStoreContractTests(UserStoreContract, SynchronousTestCase):
    def make_store(self) -> SQLiteUserStore:
        store = SQLiteUserStore(Path(self.mktemp() + ".sqlite3").absolute())
        self.addCleanup(store.close)
        return store


class MemoryUserStoreContractTests(UserStoreContract, SynchronousTestCase):
    def make_store(self) -> MemoryUserStore:
        return MemoryUserStore()


class MemoryPortalTests(SynchronousTestCase):
    """memory_portal: the real portal, checkers and realm over the fakes, all synchronous."""

    def setUp(self) -> None:
        self.store = MemoryUserStore(
            (
                memory_account("alice", "right", certificates=(FP_A,)),
                memory_account("reader", "right", read_only=True),
                memory_account("off", "right", enabled=False),
            )
        )
        self.pool = SyncVerificationPool()
        self.portal = memory_portal(self.store, pool=self.pool)

    def login(self, credentials: Any) -> Deferred[Any]:
        return self.portal.login(credentials, None, IFTPAvatar)

    def test_cheap_hash_is_a_real_argon2_hash(self) -> None:
        hashed = cheap_password_hash("right")
        self.assertTrue(hashed.startswith("$argon2id$v=19$m=8,t=1,p=1$"))
        self.assertTrue(verify_password(hashed, "right"))
        self.assertFalse(verify_password(hashed, "wrong"))

    def test_password_login(self) -> None:
        interface, avatar, logout = self.successResultOf(
            self.login(UsernamePassword(b"alice", b"right"))
        )
        self.assertIs(interface, IFTPAvatar)
        self.assertEqual(avatar.account.name, "alice")
        self.assertIsInstance(avatar.filesystem, MemoryFilesystem)
        self.assertIs(avatar.filesystem, self.portal.filesystems["alice"])  # type: ignore[attr-defined]
        self.assertFalse(avatar.filesystem.read_only)
        self.assertEqual(self.pool.submitted, 1)
        _, reader, _ = self.successResultOf(self.login(UsernamePassword(b"reader", b"right")))
        self.assertTrue(reader.read_only)
        self.assertTrue(reader.filesystem.read_only)

    def test_refused_logins(self) -> None:
        self.failureResultOf(self.login(UsernamePassword(b"alice", b"wrong")), UnauthorizedLogin)
        self.failureResultOf(self.login(UsernamePassword(b"off", b"right")), UnauthorizedLogin)
        self.failureResultOf(self.login(CertificateLogin("alice", FP_B)), UnauthorizedLogin)
        self.failureResultOf(self.login(CertificateLogin("reader", "nonsense")), UnauthorizedLogin)

    def test_certificate_login(self) -> None:
        _, avatar, _ = self.successResultOf(self.login(CertificateLogin("alice", FP_A_COLONS)))
        self.assertEqual(avatar.account.name, "alice")

    def test_full_pool(self) -> None:
        self.pool.full = True
        self.failureResultOf(self.login(UsernamePassword(b"alice", b"right")), PoolFull)
