"""File tools for the agent: list, read, write, edit and search, all inside the checkout.

The worker runs list, read, write and edit itself, on paths resolved inside the checkout, and
never holds more of a file than it shows: read_file streams a bounded window (a 400 MB file
with no newline costs a few kilobytes), edit_file refuses files past MAX_EDIT_BYTES. `search`
runs ripgrep (or grep) in the sandbox, like any command of the agent.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from workers.sandbox import CommandResult
from workers.tools.paths import ToolError, relative, resolve_for_write, resolve_inside

MAX_LIST_ENTRIES = 1000
MAX_SEARCH_LINES = 200
MAX_SEARCH_LINE_CHARS = 300
MAX_LINE_CHARS = 2000  # a longer line is shown cut, with how much was left out
MAX_EDIT_BYTES = 2 * 1024 * 1024
SKIPPED_DIRS = {".git"}
_MATCH_LINE = re.compile(r"^[^:\n]+:\d+:")


def list_files(root: Path, path: str = ".", max_depth: int = 3) -> str:
    """Show the tree under `path` to `max_depth` levels (directories end in /), without .git."""
    top = resolve_inside(root, path)
    if not top.exists():
        raise ToolError(f"no such directory: {path}")
    if not top.is_dir():
        return relative(root, top)
    if max_depth < 1:
        raise ToolError("max_depth must be at least 1")
    lines = sorted(islice(_walk(root, top, max_depth), MAX_LIST_ENTRIES + 1))
    if len(lines) > MAX_LIST_ENTRIES:
        lines = lines[:MAX_LIST_ENTRIES] + ["[more entries not shown; list a subdirectory or lower max_depth]"]
    return "\n".join(lines) or "(empty directory)"


def _walk(root: Path, top: Path, max_depth: int) -> Iterator[str]:
    base_depth = len(top.parts)
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = sorted(name for name in dirnames if name not in SKIPPED_DIRS)
        yield from (relative(root, here / name) + "/" for name in dirnames)
        yield from (relative(root, here / name) for name in filenames)
        if len(here.parts) - base_depth + 1 >= max_depth:
            dirnames[:] = []


def read_file(root: Path, path: str, start_line: int | None = None, end_line: int | None = None,
              limit: int = 20_000) -> str:
    """Return lines start_line..end_line (1-based, inclusive) prefixed with their numbers, at most `limit` characters."""
    target = _existing_file(root, path)
    first = max(start_line or 1, 1)
    if end_line is not None and end_line < first:
        raise ToolError(f"end_line ({end_line}) is before start_line ({first})")
    with open(target, "rb") as handle:
        if b"\0" in handle.read(8192):
            raise ToolError(f"{path} looks like a binary file; it cannot be shown as text")
        handle.seek(0)
        shown, used, number, more = [], 0, 0, False
        for number, (text, cut) in enumerate(_lines(handle), start=1):
            if number < first:
                continue
            if (end_line is not None and number > end_line) or used >= limit:
                more = used >= limit
                break
            entry = f"{number:>6}\t{text}" + (f" [... line cut: {cut} more bytes]" if cut else "")
            shown.append(entry)
            used += len(entry) + 1
        if more:
            shown.append(f"[output limit reached; continue with start_line={number}]")
    if not shown:
        return f"{path} has {number} lines; nothing in the requested range" if number else f"{path} is empty"
    return "\n".join(shown)


def _lines(handle: BinaryIO) -> Iterator[tuple[str, int]]:
    """Each line's first MAX_LINE_CHARS bytes as text, and how many bytes of it were left unread."""
    while True:
        head = handle.readline(MAX_LINE_CHARS)
        if not head:
            return
        cut = 0
        while not head.endswith(b"\n") and len(head) == MAX_LINE_CHARS:
            rest = handle.readline(65536)  # skip the rest of an overlong line in bounded steps
            if not rest:
                break
            cut += len(rest) - rest.endswith(b"\n")
            if rest.endswith(b"\n"):
                break
        yield head.decode("utf-8", "replace").rstrip("\n"), cut


def write_file(root: Path, path: str, content: str, *, adopt: Callable[[Path], None] = lambda path: None) -> str:
    """Create or overwrite a file with `content`, creating missing parent directories.

    `adopt` gets each directory and file this call created, so the sandbox's user owns them too.
    """
    target = resolve_for_write(root, path)
    if target.is_dir():
        raise ToolError(f"{path} is a directory")
    missing = [parent for parent in reversed(target.parents) if not parent.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    created = not target.exists()
    target.write_text(content, encoding="utf-8")
    for new in [*missing, *([target] if created else [])]:
        adopt(new)
    return f"wrote {len(content.encode())} bytes to {relative(root, target)}"


def edit_file(root: Path, path: str, old_text: str, new_text: str, replace_all: bool = False) -> str:
    """Replace exact text; refuse when it matches nowhere, or several times without replace_all."""
    target = resolve_for_write(root, path)
    if not target.is_file():
        raise ToolError(f"no such file: {path}")
    if not old_text:
        raise ToolError("old_text is empty; to create or overwrite a whole file use write_file")
    if old_text == new_text:
        raise ToolError("old_text and new_text are identical; nothing to change")
    size = target.stat().st_size
    if size > MAX_EDIT_BYTES:
        raise ToolError(f"{path} is {size / 1024 / 1024:.1f} MB; edit_file changes files up to "
                        f"{MAX_EDIT_BYTES // 1024 // 1024} MB (use run_command with sed or a script for larger ones)")
    text = target.read_text(encoding="utf-8")
    count = text.count(old_text)
    if count == 0:
        raise ToolError(f"old_text was not found in {path} (0 matches); read the file and copy the text exactly")
    if count > 1 and not replace_all:
        raise ToolError(f"old_text matches {count} times in {path}; include more surrounding lines "
                        "to make it unique, or set replace_all to true")
    target.write_text(text.replace(old_text, new_text), encoding="utf-8")
    return f"replaced {count if replace_all else 1} occurrence(s) in {relative(root, target)}"


def search(root: Path, pattern: str, path: str = ".", glob: str | None = None, *,
           run: Callable[[str], CommandResult]) -> str:
    """Find a regular expression in files with ripgrep (grep where it is missing), in the sandbox."""
    target = relative(root, resolve_inside(root, path))
    rg = ["rg", "--line-number", "--no-heading", "--color=never", "--hidden", "--glob", "!.git",
          *(["--glob", glob] if glob else []), "-e", pattern, "--", target]
    grep = ["grep", "-rnIE", "--exclude-dir=.git", *([f"--include={glob}"] if glob else []), "-e", pattern,
            "--", target]
    result = run(f"if command -v rg >/dev/null; then {shlex.join(rg)}; else {shlex.join(grep)}; fi 2>&1")
    if result.timed_out:
        raise ToolError("search took longer than its time limit; narrow the path or the glob")
    lines = result.output.splitlines()
    matches = [line for line in lines if _MATCH_LINE.match(line.removeprefix("./"))]
    if result.exit_code not in (0, 1) and not matches:
        raise ToolError(f"search failed: {result.output.strip()[:2000]}")
    if not matches:
        return f"no matches for {pattern!r} in {target}"
    shown = [line.removeprefix("./")[:MAX_SEARCH_LINE_CHARS] for line in matches[:MAX_SEARCH_LINES]]
    if len(matches) > MAX_SEARCH_LINES:
        shown.append(f"[{len(matches) - MAX_SEARCH_LINES} more matching lines not shown; narrow the search]")
    return "\n".join(shown)


def _existing_file(root: Path, path: str) -> Path:
    target = resolve_inside(root, path)
    if target.is_dir():
        raise ToolError(f"{path} is a directory; use list_files")
    if not target.is_file():
        raise ToolError(f"no such file: {path}")
    return target
