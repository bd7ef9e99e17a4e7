"""Tests for securetransport.vfs: confinement, listings, uploads, reads, errors."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from securetransport import vfs
from securetransport.vfs import (
    TEMPORARY_PREFIX,
    AlreadyExists,
    BadOffset,
    FilesystemError,
    IFilesystem,
    InsufficientStorage,
    InvalidName,
    IReadHandle,
    IUpload,
    LocalFilesystem,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ReservedName,
    ensure_home,
    listable_name,
    map_os_error,
    resolve_path,
    sweep_temporaries,
)

_E = TypeVar("_E", bound=BaseException)


def deferred_test(
    method: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Deferred[None]]:
    """Run an `async def` test method as a Deferred (trial and pytest both wait for it)."""

    @functools.wraps(method)
    def wrapper(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(method(self))

    return wrapper


def temporaries(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(TEMPORARY_PREFIX)]


class ResolveTests(SynchronousTestCase):
    """resolve_path is pure: a table of inputs and what they become."""

    def test_table(self) -> None:
        cases = [
            ("/", "", "/"),
            ("/", ".", "/"),
            ("/", "..", "/"),
            ("/", "../../etc/passwd", "/etc/passwd"),
            ("/", "/../../etc/passwd", "/etc/passwd"),
            ("/a/b", "..", "/a"),
            ("/a/b", "../..", "/"),
            ("/a/b", "../../..", "/"),
            ("/a", "b//c///d", "/a/b/c/d"),
            ("/a", "//x", "/x"),
            ("/a", "./b/./c/", "/a/b/c"),
            ("/a", "b/../../c", "/c"),
            ("/a", "%2e%2e/x", "/a/%2e%2e/x"),
            ("/a", "..%2f..%2fetc", "/a/..%2f..%2fetc"),
            ("/a", "...", "/a/..."),
            ("/a", "~root", "/a/~root"),
            ("/", "日本語/ファイル.txt", "/日本語/ファイル.txt"),
            ("/x/y", "/abs", "/abs"),
            ("/", ".st-upload", "/.st-upload"),
            ("/", ".st-upload-x/..", "/"),
        ]
        for cwd, path, expected in cases:
            self.assertEqual(resolve_path(cwd, path), expected, (cwd, path))

    def test_forbidden_characters_are_invalid_names(self) -> None:
        for path in ["a\0b", "a\rb", "a\nb", "..\\..\\windows", "a\\b", "\0", "x/\n/.."]:
            with self.assertRaises(InvalidName) as caught:
                resolve_path("/", path)
            self.assertEqual(caught.exception.code, 553, path)
        with self.assertRaises(InvalidName):
            resolve_path("/a\nb", "c")

    def test_lone_surrogate_is_invalid(self) -> None:
        # os functions would turn it into an undecodable byte (surrogateescape).
        with self.assertRaises(InvalidName):
            resolve_path("/", "bad\udcff")

    def test_temporary_prefix_gets_550(self) -> None:
        for path in [".st-upload-1234", "/sub/.st-upload-abc/x", "a/../.st-upload-"]:
            with self.assertRaises(ReservedName) as caught:
                resolve_path("/", path)
            self.assertEqual(caught.exception.code, 550, path)
            self.assertIsInstance(caught.exception, InvalidName)

    def test_listable_name(self) -> None:
        self.assertEqual(listable_name("日本".encode()), "日本")
        self.assertEqual(listable_name(b"plain.txt"), "plain.txt")
        for raw in [b"bad\xff", b"a\nb", b"a\rb", b"a\\b", b".st-upload-1", b".", b".."]:
            self.assertIsNone(listable_name(raw), raw)


class ErrorMappingTests(SynchronousTestCase):
    def test_table(self) -> None:
        cases: list[tuple[int, type[FilesystemError], int]] = [
            (errno.ENOENT, NotFound, 550),
            (errno.ELOOP, NotFound, 550),
            (errno.EACCES, PermissionDenied, 550),
            (errno.EPERM, PermissionDenied, 550),
            (errno.EROFS, PermissionDenied, 550),
            (errno.EEXIST, AlreadyExists, 550),
            (errno.ENOSPC, InsufficientStorage, 452),
            (errno.EDQUOT, QuotaExceeded, 552),
            (errno.EFBIG, QuotaExceeded, 552),
            (errno.ENAMETOOLONG, InvalidName, 553),
        ]
        for number, cls, code in cases:
            error = map_os_error(OSError(number, os.strerror(number), "/srv/secret/path"))
            self.assertIsInstance(error, cls, errno.errorcode[number])
            self.assertEqual(error.code, code)
            self.assertNotIn("/srv/secret", str(error))
        for number, text in [
            (errno.ENOTDIR, "Not a folder"),
            (errno.EISDIR, "Is a folder"),
            (errno.ENOTEMPTY, "Folder not empty"),
        ]:
            error = map_os_error(OSError(number, os.strerror(number), "/srv/secret/path"))
            self.assertEqual((type(error), error.code, error.message), (FilesystemError, 550, text))
        other = map_os_error(OSError(errno.EIO, os.strerror(errno.EIO), "/srv/secret/path"))
        self.assertEqual((other.code, other.message), (550, os.strerror(errno.EIO)))


class _FilesystemTestCase(TestCase):
    """A home `alice` below a home_root, with a sibling `bob`, and a real thread pool."""

    upload_mode: vfs.UploadMode = "atomic"

    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="test-vfs")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        base = Path(self.mktemp()).resolve()
        self.home_root = base / "home"
        self.home = self.home_root / "alice"
        self.bob = self.home_root / "bob"
        (self.home / "sub").mkdir(parents=True)
        self.bob.mkdir()
        (self.bob / "secret.txt").write_bytes(b"bob's secret")
        (self.home / "sub" / "data.txt").write_bytes(b"0123456789")
        self.fs = self.make_fs()

    def make_fs(self, **options: Any) -> LocalFilesystem:
        options.setdefault("upload_mode", self.upload_mode)
        return LocalFilesystem(self.home, threadpool=self.pool, reactor=reactor, **options)

    async def fails(self, d: Deferred[Any], cls: type[_E]) -> _E:
        try:
            result = await d
        except cls as error:
            if isinstance(error, FilesystemError):
                self.assertNotIn(str(self.home_root), error.message)
            return error
        self.fail(f"expected {cls.__name__}, got {result!r}")

    async def upload(
        self, path: str, data: bytes, fs: LocalFilesystem | None = None, **options: Any
    ) -> tuple[Any, int]:
        upload: Any = await (fs or self.fs).open_upload(path, **options)
        for start in range(0, len(data), 65536):
            await upload.write(data[start : start + 65536])
        return upload, await upload.commit()


class BasicOperationTests(_FilesystemTestCase):
    def test_provides_interface(self) -> None:
        self.assertTrue(IFilesystem.providedBy(self.fs))
        self.assertEqual(self.fs.resolve("/sub", "../x"), "/x")

    @deferred_test
    async def test_disk_work_runs_off_the_reactor_thread(self) -> None:
        threads: list[int] = []
        walk = self.fs._walk

        def recording(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.get_ident())
            return walk(*args, **kwargs)

        self.patch(self.fs, "_walk", recording)
        d = self.fs.stat("/sub/data.txt")
        self.assertNoResult(d)
        await d
        await self.fs.listdir("/sub")
        await self.fs.mkdir("/new")
        self.assertTrue(threads)
        self.assertNotIn(threading.get_ident(), threads)

    @deferred_test
    async def test_stat(self) -> None:
        root = await self.fs.stat("/")
        self.assertEqual((root.name, root.is_dir, root.is_file), ("/", True, False))
        data = await self.fs.stat("/sub/data.txt")
        self.assertEqual(
            (data.name, data.size, data.is_file, data.is_dir), ("data.txt", 10, True, False)
        )
        self.assertTrue(stat.S_ISREG(data.mode))
        self.assertAlmostEqual(data.mtime, os.stat(self.home / "sub" / "data.txt").st_mtime)
        await self.fails(self.fs.stat("/missing"), NotFound)
        error = await self.fails(self.fs.stat("/sub/data.txt/x"), FilesystemError)
        self.assertEqual((error.code, error.message), (550, "Not a folder"))

    @deferred_test
    async def test_listdir(self) -> None:
        (self.home / "b.txt").write_bytes(b"bb")
        entries = await self.fs.listdir("/")
        self.assertEqual([e.name for e in entries], ["b.txt", "sub"])
        self.assertEqual((entries[0].size, entries[0].is_file), (2, True))
        self.assertTrue(entries[1].is_dir)
        error = await self.fails(self.fs.listdir("/b.txt"), FilesystemError)
        self.assertEqual(error.message, "Not a folder")
        await self.fails(self.fs.listdir("/nope"), NotFound)

    @deferred_test
    async def test_listing_leaves_out_unusable_names(self) -> None:
        folder = os.fsencode(self.home / "sub")
        for raw in [b"bad\xffname", b"new\nline", b"carriage\rreturn", b"back\\slash"]:
            with open(os.path.join(folder, raw), "wb") as f:
                f.write(b"x")
        (self.home / "sub" / "日本.txt").write_bytes(b"ok")
        (self.home / "sub" / ".st-upload-0123abcd").write_bytes(b"partial")
        names = [e.name for e in await self.fs.listdir("/sub")]
        self.assertEqual(names, ["data.txt", "日本.txt"])

    @deferred_test
    async def test_mkdir_rmdir(self) -> None:
        await self.fs.mkdir("/sub/new")
        self.assertTrue((self.home / "sub" / "new").is_dir())
        await self.fails(self.fs.mkdir("/sub/new"), AlreadyExists)
        await self.fails(self.fs.mkdir("/"), AlreadyExists)
        await self.fails(self.fs.mkdir("/missing/new"), NotFound)
        error: FilesystemError = await self.fails(self.fs.mkdir("/bad\nname"), InvalidName)
        self.assertEqual(error.code, 553)
        self.assertEqual(os.listdir(self.home), ["sub"])
        error = await self.fails(self.fs.rmdir("/sub"), FilesystemError)
        self.assertEqual(error.message, "Folder not empty")
        error = await self.fails(self.fs.rmdir("/sub/data.txt"), FilesystemError)
        self.assertEqual(error.message, "Not a folder")
        await self.fails(self.fs.rmdir("/"), PermissionDenied)
        await self.fs.rmdir("/sub/new")
        self.assertFalse((self.home / "sub" / "new").exists())
        await self.fails(self.fs.rmdir("/sub/new"), NotFound)

    @deferred_test
    async def test_remove(self) -> None:
        error = await self.fails(self.fs.remove("/sub"), FilesystemError)
        self.assertEqual((error.code, error.message), (550, "Is a folder"))
        await self.fails(self.fs.remove("/"), FilesystemError)
        await self.fails(self.fs.remove("/sub/missing"), NotFound)
        await self.fs.remove("/sub/data.txt")
        self.assertEqual(os.listdir(self.home / "sub"), [])

    @deferred_test
    async def test_rename(self) -> None:
        await self.fs.rename("/sub/data.txt", "/moved.txt")
        self.assertEqual((self.home / "moved.txt").read_bytes(), b"0123456789")
        await self.fs.rename("/moved.txt", "/sub/back.txt")
        self.assertEqual(os.listdir(self.home / "sub"), ["back.txt"])
        await self.fs.rename("/sub", "/folder")
        self.assertTrue((self.home / "folder" / "back.txt").is_file())
        await self.fails(self.fs.rename("/", "/x"), PermissionDenied)
        await self.fails(self.fs.rename("/folder", "/"), FilesystemError)
        await self.fails(self.fs.rename("/folder", "/bad\nname"), InvalidName)
        await self.fails(self.fs.rename("/folder", "/.st-upload-1"), ReservedName)
        await self.fails(self.fs.rename("/missing", "/x"), NotFound)
        error = await self.fails(self.fs.rename("/folder", "/folder/inner"), FilesystemError)
        self.assertEqual(error.code, 550)
        self.assertEqual(os.listdir(self.home), ["folder"])

    @deferred_test
    async def test_rename_overwrites_a_file(self) -> None:
        (self.home / "a").write_bytes(b"A")
        (self.home / "b").write_bytes(b"B")
        await self.fs.rename("/a", "/b")
        self.assertEqual(sorted(os.listdir(self.home)), ["b", "sub"])
        self.assertEqual((self.home / "b").read_bytes(), b"A")

    @deferred_test
    async def test_set_mtime(self) -> None:
        await self.fs.set_mtime("/sub/data.txt", 1_000_000_000.5)
        self.assertAlmostEqual(os.stat(self.home / "sub" / "data.txt").st_mtime, 1_000_000_000.5)
        await self.fs.set_mtime("/sub", 1_200_000_000)
        self.assertEqual((await self.fs.stat("/sub")).mtime, 1_200_000_000)
        await self.fs.set_mtime("/", 1_300_000_000)
        self.assertEqual(os.stat(self.home).st_mtime, 1_300_000_000)
        await self.fails(self.fs.set_mtime("/missing", 0), NotFound)

    @deferred_test
    async def test_modes_follow_umask_not_process_umask(self) -> None:
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)
        for umask, file_mode, dir_mode in [(0o027, 0o640, 0o750), (0o002, 0o664, 0o775)]:
            fs = self.make_fs(umask=umask)
            folder = f"/d{umask:o}"
            await fs.mkdir(folder)
            await self.upload(f"{folder}/f", b"data", fs=fs)
            self.assertEqual(stat.S_IMODE(os.stat(self.home / folder[1:]).st_mode), dir_mode)
            self.assertEqual(stat.S_IMODE(os.stat(self.home / folder[1:] / "f").st_mode), file_mode)

    @deferred_test
    async def test_read_only(self) -> None:
        fs = self.make_fs(read_only=True)
        self.assertTrue(fs.read_only)
        before = sorted(os.listdir(self.home)), (self.home / "sub" / "data.txt").read_bytes()
        writes: list[Deferred[Any]] = [
            fs.open_upload("/new.txt"),
            fs.open_upload("/sub/data.txt", append=True),
            fs.open_upload("/u", unique=True),
            fs.mkdir("/new"),
            fs.rmdir("/sub"),
            fs.remove("/sub/data.txt"),
            fs.rename("/sub", "/other"),
            fs.set_mtime("/sub/data.txt", 0),
        ]
        for d in writes:
            await self.fails(d, PermissionDenied)
        after = sorted(os.listdir(self.home)), (self.home / "sub" / "data.txt").read_bytes()
        self.assertEqual(before, after)
        self.assertEqual(len(await fs.listdir("/sub")), 1)
        handle: Any = await fs.open_read("/sub/data.txt")
        self.assertEqual(await handle.read(0, 100), b"0123456789")
        handle.close()

    @deferred_test
    async def test_missing_home_is_not_found(self) -> None:
        fs = LocalFilesystem(self.home_root / "nobody", threadpool=self.pool, reactor=reactor)
        await self.fails(fs.stat("/"), NotFound)


class ConfinementTests(_FilesystemTestCase):
    """Symlinks leading out of the home are NotFound for every operation."""

    escapes = ["root", "bobrel", "bobabs", "secret", "up", "dotdot", "loop", "chain"]

    def setUp(self) -> None:
        super().setUp()
        links = {
            "root": "/",
            "bobrel": "../bob",
            "bobabs": str(self.bob),
            "secret": "../bob/secret.txt",
            "up": "sub/../../bob",
            "dotdot": "..",
            "loop": "loop",
            "chain": "bobrel",
            "inner": "sub",
            "innerabs": str(self.home / "sub"),
            "filelink": "sub/data.txt",
            "self": ".",
            "dangling": "sub/nothing",
            "temporary": "sub/.st-upload-feed",
        }
        for name, target in links.items():
            os.symlink(target, self.home / name)
        (self.home / "sub" / ".st-upload-feed").write_bytes(b"partial")

    def assertBobUntouched(self) -> None:
        self.assertEqual(sorted(os.listdir(self.bob)), ["secret.txt"])
        self.assertEqual((self.bob / "secret.txt").read_bytes(), b"bob's secret")

    @deferred_test
    async def test_escaping_links_are_not_found(self) -> None:
        for link in self.escapes:
            for path in [f"/{link}", f"/{link}/secret.txt", f"/sub/../{link}/secret.txt"]:
                await self.fails(self.fs.stat(path), NotFound)
                await self.fails(self.fs.open_read(path), NotFound)
                await self.fails(self.fs.digest(path, 0, None), NotFound)
            await self.fails(self.fs.listdir(f"/{link}"), NotFound)
            await self.fails(self.fs.open_upload(f"/{link}/new.txt"), NotFound)
            await self.fails(self.fs.open_upload(f"/{link}/x", unique=True), NotFound)
            await self.fails(self.fs.mkdir(f"/{link}/newdir"), NotFound)
            await self.fails(self.fs.rename("/sub/data.txt", f"/{link}/stolen"), NotFound)
            await self.fails(self.fs.remove(f"/{link}/secret.txt"), NotFound)
            await self.fails(self.fs.set_mtime(f"/{link}/secret.txt", 0), NotFound)
        self.assertBobUntouched()
        self.assertTrue((self.home / "sub" / "data.txt").is_file())

    @deferred_test
    async def test_upload_through_escaping_file_link(self) -> None:
        await self.fails(self.fs.open_upload("/secret"), NotFound)
        await self.fails(self.fs.open_upload("/secret", append=True), NotFound)
        self.assertBobUntouched()

    @deferred_test
    async def test_invisible_links_cannot_be_removed_or_renamed(self) -> None:
        await self.fails(self.fs.remove("/secret"), NotFound)
        await self.fails(self.fs.rename("/bobabs", "/mine"), NotFound)
        self.assertTrue(os.path.islink(self.home / "secret"))
        self.assertTrue(os.path.islink(self.home / "bobabs"))

    @deferred_test
    async def test_links_inside_the_home_are_followed(self) -> None:
        inner = await self.fs.stat("/inner")
        self.assertEqual((inner.name, inner.is_dir), ("inner", True))
        filelink = await self.fs.stat("/filelink")
        self.assertEqual((filelink.size, filelink.is_file), (10, True))
        for folder in ["/inner", "/innerabs", "/self/sub", "/self/self/inner"]:
            names = [e.name for e in await self.fs.listdir(folder)]
            self.assertEqual(names, ["data.txt"], folder)
        handle: Any = await self.fs.open_read("/innerabs/data.txt")
        self.assertEqual(await handle.read(0, 4), b"0123")
        handle.close()

    @deferred_test
    async def test_listing_shows_only_links_that_stay_inside(self) -> None:
        entries = {e.name: e for e in await self.fs.listdir("/")}
        self.assertEqual(sorted(entries), ["filelink", "inner", "innerabs", "self", "sub"])
        self.assertTrue(entries["inner"].is_dir)
        self.assertEqual((entries["filelink"].is_file, entries["filelink"].size), (True, 10))

    @deferred_test
    async def test_upload_through_inside_link_replaces_the_real_file(self) -> None:
        await self.upload("/filelink", b"new content")
        self.assertTrue(os.path.islink(self.home / "filelink"))
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"new content")
        self.assertEqual(temporaries(self.home / "sub"), [".st-upload-feed"])

    @deferred_test
    async def test_removing_a_link_removes_the_link_only(self) -> None:
        await self.fs.remove("/filelink")
        self.assertFalse(os.path.lexists(self.home / "filelink"))
        self.assertTrue((self.home / "sub" / "data.txt").is_file())

    @deferred_test
    async def test_temporaries_are_550_everywhere(self) -> None:
        with self.assertRaises(ReservedName) as caught:
            self.fs.resolve("/sub", ".st-upload-feed")
        self.assertEqual(caught.exception.code, 550)
        path = "/sub/.st-upload-feed"
        attempts: list[Deferred[Any]] = [
            self.fs.stat(path),
            self.fs.open_read(path),
            self.fs.listdir(path),
            self.fs.open_upload(path),
            self.fs.remove(path),
            self.fs.rename(path, "/sub/x"),
            self.fs.set_mtime(path, 0),
            self.fs.digest(path, 0, None),
            self.fs.stat("/temporary"),
            self.fs.open_read("/temporary"),
        ]
        for d in attempts:
            error = await self.fails(d, FilesystemError)
            self.assertEqual(error.code, 550)
        self.assertEqual((self.home / "sub" / ".st-upload-feed").read_bytes(), b"partial")

    @deferred_test
    async def test_swapped_folder_cannot_lead_out(self) -> None:
        # A folder replaced by a symlink to another home is caught by the walk itself.
        os.rename(self.home / "sub", self.home / "sub.old")
        os.symlink(self.bob, self.home / "sub")
        await self.fails(self.fs.open_read("/sub/secret.txt"), NotFound)
        await self.fails(self.fs.open_upload("/sub/secret.txt"), NotFound)
        self.assertBobUntouched()


class ReadTests(_FilesystemTestCase):
    @deferred_test
    async def test_read_handle(self) -> None:
        handle: Any = await self.fs.open_read("/sub/data.txt")
        self.assertTrue(IReadHandle.providedBy(handle))
        self.assertEqual(handle.size, 10)
        self.assertEqual(os.fstat(handle.fileno()).st_size, 10)
        self.assertEqual(await handle.read(0, 4), b"0123")
        self.assertEqual(await handle.read(8, 100), b"89")
        self.assertEqual(await handle.read(10, 100), b"")
        handle.close()
        handle.close()
        await self.fails(handle.read(0, 1), FilesystemError)

    @deferred_test
    async def test_close_waits_for_reads_in_flight(self) -> None:
        handle: Any = await self.fs.open_read("/sub/data.txt")
        fd = handle.fileno()
        d = handle.read(2, 3)
        handle.close()
        self.assertEqual(await d, b"234")
        with self.assertRaises(OSError):
            os.fstat(fd)

    @deferred_test
    async def test_only_regular_files(self) -> None:
        for path in ["/sub", "/"]:
            error = await self.fails(self.fs.open_read(path), FilesystemError)
            self.assertEqual((error.code, error.message), (550, "Is a folder"))
        os.mkfifo(self.home / "fifo")
        error = await self.fails(self.fs.open_read("/fifo"), FilesystemError)
        self.assertEqual(error.message, "Not a regular file")
        await self.fails(self.fs.open_read("/missing"), NotFound)

    @deferred_test
    async def test_digest(self) -> None:
        content = os.urandom(3 * 1024 * 1024 + 17)
        (self.home / "big").write_bytes(content)

        def sha(data: bytes) -> str:
            return hashlib.sha256(data).hexdigest()

        self.assertEqual(await self.fs.digest("/big", 0, None), sha(content))
        self.assertEqual(await self.fs.digest("/big", 5, 2_000_000), sha(content[5:2_000_000]))
        self.assertEqual(await self.fs.digest("/big", 100, 10**12), sha(content[100:]))
        self.assertEqual(await self.fs.digest("/big", len(content), None), sha(b""))
        error = await self.fails(self.fs.digest("/big", len(content) + 1, None), BadOffset)
        self.assertEqual(error.code, 554)
        await self.fails(self.fs.digest("/big", 10, 5), BadOffset)
        await self.fails(self.fs.digest("/sub", 0, None), FilesystemError)


class AtomicUploadTests(_FilesystemTestCase):
    upload_mode: vfs.UploadMode = "atomic"

    @deferred_test
    async def test_new_file(self) -> None:
        data = os.urandom(3 * 1024 * 1024 + 5)
        upload, count = await self.upload("/sub/new.bin", data)
        self.assertTrue(IUpload.providedBy(upload))
        self.assertEqual(upload.path, "/sub/new.bin")
        self.assertEqual(count, len(data))
        self.assertEqual((self.home / "sub" / "new.bin").read_bytes(), data)
        self.assertEqual(stat.S_IMODE(os.stat(self.home / "sub" / "new.bin").st_mode), 0o640)
        self.assertEqual(temporaries(self.home / "sub"), [])

    @deferred_test
    async def test_target_untouched_until_commit(self) -> None:
        target = self.home / "sub" / "data.txt"
        os.chmod(target, 0o600)
        upload: Any = await self.fs.open_upload("/sub/data.txt")
        await upload.write(b"new")
        self.assertEqual(target.read_bytes(), b"0123456789")
        self.assertEqual(len(temporaries(self.home / "sub")), 1)
        self.assertEqual([e.name for e in await self.fs.listdir("/sub")], ["data.txt"])
        self.assertEqual(await upload.commit(), 3)
        self.assertEqual(target.read_bytes(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o640)
        self.assertEqual(temporaries(self.home / "sub"), [])
        await self.fails(upload.write(b"more"), FilesystemError)
        await self.fails(upload.commit(), FilesystemError)

    @deferred_test
    async def test_abort_keeps_the_previous_file(self) -> None:
        upload: Any = await self.fs.open_upload("/sub/data.txt")
        await upload.write(os.urandom(2 * 1024 * 1024))
        await upload.abort()
        await upload.abort()
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123456789")
        self.assertEqual(temporaries(self.home / "sub"), [])
        await self.fails(upload.write(b"x"), FilesystemError)

    @deferred_test
    async def test_abort_of_a_new_name_leaves_nothing(self) -> None:
        upload: Any = await self.fs.open_upload("/fresh")
        await upload.write(b"partial")
        await upload.abort()
        self.assertEqual(os.listdir(self.home), ["sub"])

    @deferred_test
    async def test_rest_and_appe(self) -> None:
        await self.upload("/sub/data.txt", b"abc", offset=4)
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123abc")
        await self.upload("/sub/data.txt", b"XY", offset=7)
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123abcXY")
        _, count = await self.upload("/sub/data.txt", b"++", append=True)
        self.assertEqual(count, 2)
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123abcXY++")
        await self.upload("/sub/appended", b"first", append=True)
        self.assertEqual((self.home / "sub" / "appended").read_bytes(), b"first")
        self.assertEqual(temporaries(self.home / "sub"), [])

    @deferred_test
    async def test_rest_abort_keeps_the_previous_file(self) -> None:
        upload: Any = await self.fs.open_upload("/sub/data.txt", offset=5)
        await upload.write(b"zzz")
        await upload.abort()
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123456789")
        self.assertEqual(temporaries(self.home / "sub"), [])

    @deferred_test
    async def test_rest_beyond_the_end(self) -> None:
        error = await self.fails(self.fs.open_upload("/sub/data.txt", offset=11), BadOffset)
        self.assertEqual((error.code, error.message), (554, "Restart offset beyond end of file"))
        await self.fails(self.fs.open_upload("/sub/missing", offset=1), BadOffset)
        await self.fails(self.fs.open_upload("/sub/data.txt", offset=-1), BadOffset)
        self.assertEqual(os.listdir(self.home / "sub"), ["data.txt"])

    @deferred_test
    async def test_upload_onto_a_folder_or_bad_name(self) -> None:
        for path in ["/sub", "/", "/self"]:
            if path == "/self":
                os.symlink(".", self.home / "self")
            error = await self.fails(self.fs.open_upload(path), FilesystemError)
            self.assertEqual(error.message, "Is a folder")
        await self.fails(self.fs.open_upload("/a\nb"), InvalidName)
        await self.fails(self.fs.open_upload("/missing/x"), NotFound)
        self.assertEqual(temporaries(self.home), [])

    @deferred_test
    async def test_stou(self) -> None:
        first, _ = await self.upload("/sub/data.txt", b"one", unique=True)
        second, _ = await self.upload("/sub/data.txt", b"two", unique=True)
        third, _ = await self.upload("/sub/report", b"three", unique=True)
        self.assertEqual(
            [first.path, second.path, third.path],
            ["/sub/data.txt.1", "/sub/data.txt.2", "/sub/report"],
        )
        folder = self.home / "sub"
        self.assertEqual((folder / "data.txt").read_bytes(), b"0123456789")
        self.assertEqual((folder / "data.txt.1").read_bytes(), b"one")
        self.assertEqual((folder / "data.txt.2").read_bytes(), b"two")
        self.assertEqual((folder / "report").read_bytes(), b"three")
        self.assertEqual(stat.S_IMODE(os.stat(folder / "data.txt.1").st_mode), 0o640)

    @deferred_test
    async def test_stou_reserves_the_name_and_abort_releases_it(self) -> None:
        upload: Any = await self.fs.open_upload("/sub/data.txt", unique=True)
        self.assertEqual(upload.path, "/sub/data.txt.1")
        other: Any = await self.fs.open_upload("/sub/data.txt", unique=True)
        self.assertEqual(other.path, "/sub/data.txt.2")
        await upload.write(b"partial")
        await upload.abort()
        await other.abort()
        self.assertEqual(os.listdir(self.home / "sub"), ["data.txt"])

    @deferred_test
    async def test_durable_commit(self) -> None:
        fs = self.make_fs(durable=True)
        await self.upload("/durable", b"safe", fs=fs)
        self.assertEqual((self.home / "durable").read_bytes(), b"safe")

    @deferred_test
    async def test_write_error_is_reported_and_the_partial_removed(self) -> None:
        def full(fd: int, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(vfs, "_write_all", full)
        upload: Any = await self.fs.open_upload("/sub/data.txt")
        vfs_upload: Any = upload
        self.patch(vfs_upload, "chunk_size", 4)
        await upload.write(b"12345")  # handed to the pool; the failure comes later
        error = await self.fails(upload.commit(), InsufficientStorage)
        self.assertEqual(error.code, 452)
        self.assertEqual(temporaries(self.home / "sub"), [])
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123456789")

    @deferred_test
    async def test_write_error_fails_the_next_write(self) -> None:
        def over_quota(fd: int, data: bytes) -> None:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        self.patch(vfs, "_write_all", over_quota)
        upload: Any = await self.fs.open_upload("/x")
        self.patch(upload, "chunk_size", 4)
        await upload.write(b"12345")
        for _ in range(50):
            if upload._error is not None:
                break
            await upload._drained()
        error = await self.fails(upload.write(b"more"), QuotaExceeded)
        self.assertEqual(error.code, 552)
        await self.fails(upload.commit(), QuotaExceeded)
        self.assertEqual(os.listdir(self.home), ["sub"])

    @deferred_test
    async def test_back_pressure_and_order(self) -> None:
        gate = threading.Event()
        real_write = vfs._write_all

        def slow(fd: int, data: bytes) -> None:
            gate.wait(10)
            real_write(fd, data)

        self.patch(vfs, "_write_all", slow)
        self.addCleanup(gate.set)
        upload: Any = await self.fs.open_upload("/ordered")
        self.patch(upload, "chunk_size", 10)
        self.patch(upload, "max_in_flight", 40)
        pieces = [bytes([65 + i]) * 10 for i in range(6)]
        results = [upload.write(piece) for piece in pieces]
        fired = [bool(getattr(d, "called", False)) for d in results]
        # 10-byte chunks, one held in the pool: the fourth brings 40 bytes in flight.
        self.assertEqual(fired, [True, True, True, False, False, False])
        gate.set()
        for d in results:
            await d
        self.assertEqual(await upload.commit(), 60)
        self.assertEqual((self.home / "ordered").read_bytes(), b"".join(pieces))

    @deferred_test
    async def test_abort_releases_a_paused_sender(self) -> None:
        gate = threading.Event()
        real_write = vfs._write_all

        def slow(fd: int, data: bytes) -> None:
            gate.wait(10)
            real_write(fd, data)

        self.patch(vfs, "_write_all", slow)
        self.addCleanup(gate.set)
        upload: Any = await self.fs.open_upload("/sub/data.txt")
        self.patch(upload, "chunk_size", 10)
        self.patch(upload, "max_in_flight", 20)
        waiting = [upload.write(b"x" * 10) for _ in range(3)][-1]
        self.assertNoResult(waiting)
        aborted = upload.abort()
        self.assertIsNone(self.successResultOf(waiting))
        self.assertNoResult(aborted)  # waits for the write in the pool
        gate.set()
        await aborted
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123456789")
        self.assertEqual(temporaries(self.home / "sub"), [])


class ResumableUploadTests(_FilesystemTestCase):
    upload_mode: vfs.UploadMode = "resumable"

    @deferred_test
    async def test_interrupted_new_upload_leaves_a_partial_to_resume(self) -> None:
        upload: Any = await self.fs.open_upload("/big.bin")
        await upload.write(b"A" * 100)
        self.assertEqual(temporaries(self.home), [])
        await upload.abort()
        self.assertEqual((self.home / "big.bin").read_bytes(), b"A" * 100)
        size = (await self.fs.stat("/big.bin")).size
        _, count = await self.upload("/big.bin", b"B" * 50, offset=size)
        self.assertEqual(count, 50)
        self.assertEqual((self.home / "big.bin").read_bytes(), b"A" * 100 + b"B" * 50)
        await self.upload("/big.bin", b"C" * 5, append=True)
        self.assertEqual((self.home / "big.bin").read_bytes(), b"A" * 100 + b"B" * 50 + b"C" * 5)
        self.assertEqual(stat.S_IMODE(os.stat(self.home / "big.bin").st_mode), 0o640)
        self.assertEqual(temporaries(self.home), [])

    @deferred_test
    async def test_rest_writes_in_place_and_truncates_after(self) -> None:
        upload: Any = await self.fs.open_upload("/sub/data.txt", offset=4)
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123")
        await upload.write(b"ab")
        await upload.abort()
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123ab")
        await self.upload("/sub/data.txt", b"XY", offset=5)
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123aXY")
        await self.fails(self.fs.open_upload("/sub/data.txt", offset=8), BadOffset)
        await self.fails(self.fs.open_upload("/sub/none", offset=1), BadOffset)

    @deferred_test
    async def test_overwriting_a_complete_file_goes_through_a_temporary(self) -> None:
        upload: Any = await self.fs.open_upload("/sub/data.txt")
        await upload.write(b"replacement")
        self.assertEqual(len(temporaries(self.home / "sub")), 1)
        await upload.abort()
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"0123456789")
        self.assertEqual(temporaries(self.home / "sub"), [])
        await self.upload("/sub/data.txt", b"replacement")
        self.assertEqual((self.home / "sub" / "data.txt").read_bytes(), b"replacement")

    @deferred_test
    async def test_stou_writes_in_place(self) -> None:
        upload: Any = await self.fs.open_upload("/sub/data.txt", unique=True)
        self.assertEqual(upload.path, "/sub/data.txt.1")
        await upload.write(b"part")
        await upload.abort()
        self.assertEqual((self.home / "sub" / "data.txt.1").read_bytes(), b"part")
        self.assertEqual(temporaries(self.home / "sub"), [])


class SweepTests(SynchronousTestCase):
    def test_sweep_removes_temporaries_only(self) -> None:
        root = Path(self.mktemp()).resolve()
        outside = root.parent / (root.name + "-outside")
        outside.mkdir(parents=True)
        (outside / "keep").write_bytes(b"keep")
        deep = root / "alice" / "a" / "b"
        deep.mkdir(parents=True)
        odd = os.path.join(os.fsencode(root), b"bob\xff")
        os.mkdir(odd)
        files = [
            root / "alice" / ".st-upload-1",
            deep / ".st-upload-2",
            Path(os.fsdecode(os.path.join(odd, b".st-upload-3"))),
        ]
        for path in files:
            path.write_bytes(b"partial")
        (deep / "data").write_bytes(b"data")
        (root / "alice" / ".st-upload-dir").mkdir()
        os.symlink(outside / "keep", root / "alice" / ".st-upload-link")
        os.symlink(outside, root / "alice" / "outside")
        (outside / ".st-upload-9").write_bytes(b"not ours")

        self.assertEqual(sweep_temporaries(root), 4)
        for path in files:
            self.assertFalse(path.exists())
        self.assertFalse(os.path.lexists(root / "alice" / ".st-upload-link"))
        self.assertEqual((outside / "keep").read_bytes(), b"keep")
        self.assertTrue((outside / ".st-upload-9").exists())
        self.assertTrue((root / "alice" / ".st-upload-dir").is_dir())
        self.assertEqual((deep / "data").read_bytes(), b"data")
        self.assertEqual(sweep_temporaries(root), 0)
        self.assertEqual(sweep_temporaries(root / "missing"), 0)


class EnsureHomeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.root = self.base / "home"

    def test_creates_with_umask_mode(self) -> None:
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)
        home = ensure_home(self.root, "alice", 0o027)
        self.assertEqual(home, self.root / "alice")
        self.assertTrue(home.is_dir())
        self.assertEqual(stat.S_IMODE(os.stat(home).st_mode), 0o750)
        self.assertEqual(ensure_home(self.root, "alice", 0o027), home)
        nested = ensure_home(self.root, "partners/acme/", 0o022)
        self.assertEqual(nested, self.root / "partners" / "acme")
        self.assertEqual(stat.S_IMODE(os.stat(nested).st_mode), 0o755)

    def test_refuses_what_leaves_home_root(self) -> None:
        self.root.mkdir(parents=True)
        outside = self.base / "outside"
        outside.mkdir()
        os.symlink(outside, self.root / "escape")
        os.symlink("../outside/new", self.root / "dangling")
        os.symlink(".", self.root / "same")
        (self.root / "file").write_bytes(b"")
        for home in [
            "",
            ".",
            "/",
            "/etc",
            "../outside",
            "a/../../outside",
            "a/..",
            "escape",
            "escape/sub",
            "dangling",
            "same",
            "file",
            "bad\0name",
            "bad\nname",
            ".st-upload-x",
        ]:
            with self.assertRaises(FilesystemError, msg=home) as caught:
                ensure_home(self.root, home, 0o027)
            self.assertNotIn("Traceback", str(caught.exception))
        self.assertEqual(os.listdir(outside), [])
        self.assertFalse((self.root / "a").exists())

    def test_link_inside_home_root_is_followed(self) -> None:
        (self.root / "shared").mkdir(parents=True)
        os.symlink("shared", self.root / "carol")
        self.assertEqual(ensure_home(self.root, "carol", 0o027), self.root / "shared")
