"""Property tests for securetransport.vfs.resolve_path."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from securetransport.vfs import TEMPORARY_PREFIX, FilesystemError, InvalidName, resolve_path

# Path-like text: mostly separators, dots and tricky characters, sometimes anything.
_pieces = st.sampled_from(
    [
        "/",
        "//",
        ".",
        "..",
        "...",
        "a",
        "b",
        "%2e%2e",
        "%2f",
        "\\",
        "\0",
        "\r",
        "\n",
        "~",
        "é",
        "日",
        ".st-upload-",
        ".st-upload",
        " ",
        "\udcff",
    ]
)
_paths = st.one_of(st.lists(_pieces, max_size=12).map("".join), st.text(max_size=40))


def _is_normalized(result: str) -> bool:
    if result == "/":
        return True
    parts = result.split("/")
    return parts[0] == "" and all(p not in ("", ".", "..") for p in parts[1:])


class ResolvePropertyTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(cwd=_paths, path=_paths)
    def test_result_is_absolute_normalized_and_confined(self, cwd: str, path: str) -> None:
        try:
            result = resolve_path(cwd, path)
        except FilesystemError as error:
            self.assertIn(error.code, (550, 553))
            return
        self.assertTrue(result.startswith("/"), result)
        self.assertTrue(_is_normalized(result), result)
        self.assertNotIn("..", result.split("/"))
        for character in "\0\r\n\\":
            self.assertNotIn(character, result)
        self.assertFalse(any(p.startswith(TEMPORARY_PREFIX) for p in result.split("/")))
        result.encode("utf-8")
        # Normal form is a fixed point, and an absolute path ignores the cwd.
        self.assertEqual(resolve_path("/", result), result)
        self.assertEqual(resolve_path("/elsewhere/deep", result), result)

    @settings(max_examples=200, deadline=None)
    @given(cwd=_paths, path=_paths)
    def test_relative_path_resolves_below_the_cwd_or_via_dotdot(self, cwd: str, path: str) -> None:
        try:
            base = resolve_path("/", cwd)
            result = resolve_path(cwd, path)
        except FilesystemError:
            return
        if ".." not in path.split("/") and not path.startswith("/"):
            self.assertTrue(result == base or result.startswith(base.rstrip("/") + "/"))

    @given(
        before=_paths,
        bad=st.sampled_from("\0\r\n\\"),
        after=_paths,
        in_cwd=st.booleans(),
    )
    def test_forbidden_characters_are_always_refused(
        self, before: str, bad: str, after: str, in_cwd: bool
    ) -> None:
        text = before + bad + after
        with self.assertRaises(InvalidName) as caught:
            resolve_path(text, "x") if in_cwd else resolve_path("/", text)
        self.assertEqual(caught.exception.code, 553)
