"""File tools for the agent: list, read, write, edit and search, all inside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from workers.tools.paths import ToolError, relative, resolve_for_write, resolve_inside

MAX_LIST_ENTRIES = 1000
MAX_SEARCH_LINES = 200
MAX_SEARCH_LINE_CHARS = 300
SKIPPED_DIRS = {".git"}


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
    """Return lines start_line..end_line (1-based, inclusive) prefixed with their numbers."""
    target = _existing_file(root, path)
    with open(target, "rb") as handle:
        if b"\0" in handle.read(8192):
            raise ToolError(f"{path} looks like a binary file; it cannot be shown as text")
    first = max(start_line or 1, 1)
    if end_line is not None and end_line < first:
        raise ToolError(f"end_line ({end_line}) is before start_line ({first})")
    shown, used, number = [], 0, 0
    with open(target, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if number < first:
                continue
            if (end_line is not None and number > end_line) or used >= limit:
                if used >= limit:
                    shown.append(f"[output limit reached; continue with start_line={number}]")
                break
            entry = f"{number:>6}\t{line.rstrip(chr(10))}"
            shown.append(entry)
            used += len(entry) + 1
    if not shown:
        return f"{path} has {number} lines; nothing in the requested range" if number else f"{path} is empty"
    return "\n".join(shown)


def write_file(root: Path, path: str, content: str) -> str:
    """Create or overwrite a file with `content`, creating missing parent directories."""
    target = resolve_for_write(root, path)
    if target.is_dir():
        raise ToolError(f"{path} is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
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
    text = target.read_text(encoding="utf-8")
    count = text.count(old_text)
    if count == 0:
        raise ToolError(f"old_text was not found in {path} (0 matches); read the file and copy the text exactly")
    if count > 1 and not replace_all:
        raise ToolError(f"old_text matches {count} times in {path}; include more surrounding lines "
                        "to make it unique, or set replace_all to true")
    target.write_text(text.replace(old_text, new_text), encoding="utf-8")
    return f"replaced {count if replace_all else 1} occurrence(s) in {relative(root, target)}"


def search(root: Path, pattern: str, path: str = ".", glob: str | None = None, timeout: float = 60) -> str:
    """Find a regular expression in files (ripgrep if installed, else grep), capped in lines."""
    target = relative(root, resolve_inside(root, path))
    if shutil.which("rg"):
        command = ["rg", "--line-number", "--no-heading", "--color=never", "--hidden", "--glob", "!.git"]
        command += ["--glob", glob] if glob else []
    else:
        command = ["grep", "-rnIE", "--exclude-dir=.git"] + ([f"--include={glob}"] if glob else [])
    try:
        result = subprocess.run([*command, "-e", pattern, "--", target], cwd=root.resolve(),
                                capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"search took longer than {timeout:g}s; narrow the path or the glob") from None
    if result.returncode > 1 and not result.stdout:
        raise ToolError(f"search failed: {result.stderr.strip()}")
    lines = result.stdout.splitlines()
    if not lines:
        return f"no matches for {pattern!r} in {target}"
    shown = [line.removeprefix("./")[:MAX_SEARCH_LINE_CHARS] for line in lines[:MAX_SEARCH_LINES]]
    if len(lines) > MAX_SEARCH_LINES:
        shown.append(f"[{len(lines) - MAX_SEARCH_LINES} more matching lines not shown; narrow the search]")
    return "\n".join(shown)


def _existing_file(root: Path, path: str) -> Path:
    target = resolve_inside(root, path)
    if target.is_dir():
        raise ToolError(f"{path} is a directory; use list_files")
    if not target.is_file():
        raise ToolError(f"no such file: {path}")
    return target
