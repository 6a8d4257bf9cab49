"""A realistic large repository for the benchmarks, built with `git fast-import` and cached.

Shape (at the default 100,000 files): about 20 files a directory in a tree five levels deep
(`src/<area>/<pkg>/<mod>/<sub>/`), text files of 0.5-3 KB drawn from a fixed vocabulary of code-like
lines (so zlib packs them about as well as real source), one binary file in 400 of 2-200 KB of
random bytes (images, fixtures: they do not compress), and a history of HISTORY_COMMITS commits
after the files arrive in ten import commits: each edits a few files, about one in five renames
a file to another directory, about one in ten replaces a binary. At 100k files that is about
120k objects in one pack of about 100 MB; `sizes` sweeps 1k-100k for the plots.

The repository is built once per (files, version) under $FORGECREW_BENCH_CACHE (default
~/.cache/forgecrew-bench/) and reused: building the 100k-file one takes about a minute, the
`--quick` one (QUICK_FILES) a few seconds.

Run: python bench/repo_generator.py [--files N | --quick]  (prints the path and its size)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

VERSION = 1  # bump when the shape changes, so cached repositories are rebuilt
LARGE_FILES = 100_000
QUICK_FILES = 5_000
SWEEP = (1_000, 3_000, 10_000, 30_000, 100_000)
FILES_PER_DIR = 20
FANOUT = 6  # subdirectories per directory above the leaves
BINARY_EVERY = 400
HISTORY_COMMITS = 300
IMPORT_COMMITS = 10
WORDS = ("self value result config request response handler client server item items index count "
         "path name data buffer error status token parser node tree cache queue worker task event "
         "return if else for while def class import from async await yield None True False raise "
         "try except with as lambda assert len range dict list str int bytes print open").split()


def cache_dir() -> Path:
    """Where generated repositories live between runs."""
    return Path(os.environ.get("FORGECREW_BENCH_CACHE") or Path.home() / ".cache" / "forgecrew-bench")


def ensure_repo(files: int = LARGE_FILES, *, seed: int = 7) -> Path:
    """The bare repository with `files` files at the head of `main`, built on first use."""
    target = cache_dir() / f"repo-v{VERSION}-{files}-{seed}.git"
    if (target / "HEAD").is_file() and (target / "forgecrew-bench-complete").is_file():
        return target
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _git("init", "--bare", "-q", "-b", "main", str(partial))
    process = subprocess.Popen(["git", "fast-import", "--quiet", "--depth=20"], cwd=partial,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stdin is not None
    try:
        _Generator(files, seed).write(process.stdin)
    finally:
        process.stdin.close()
        if process.wait() != 0:
            raise RuntimeError(f"git fast-import failed building {partial}")
    (partial / "forgecrew-bench-complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def sizes(*, quick: bool) -> tuple[int, ...]:
    """Repository sizes (file counts) for the workspace-vs-size series."""
    return (1_000, 3_000, QUICK_FILES) if quick else SWEEP


def directory_of(index: int) -> str:
    """The directory of the index-th file: FILES_PER_DIR files a leaf, FANOUT leaves a parent, five levels."""
    leaf = index // FILES_PER_DIR
    parts = []
    for _ in range(4):
        parts.append(leaf % FANOUT)
        leaf //= FANOUT
    names = ("area", "pkg", "mod", "sub")
    return "src/" + "/".join(f"{name}{value}" for name, value in zip(names, [leaf, *reversed(parts[1:])])) \
        + f"/leaf{parts[0]}"


class _Generator:
    """Writes one fast-import stream: the import commits, then the edit/rename/binary history."""

    def __init__(self, files: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.files = files
        self.lines = [self._line() for _ in range(4000)]
        self.paths = [self._path(index) for index in range(files)]
        self.stamp = 1_700_000_000
        self.marks = 0

    def _line(self) -> str:
        indent = "    " * self.rng.randint(0, 3)
        return indent + " ".join(self.rng.choices(WORDS, k=self.rng.randint(3, 12)))

    def _path(self, index: int) -> str:
        extension = ".png" if index % BINARY_EVERY == BINARY_EVERY - 1 else self.rng.choice((".py", ".ts", ".go", ".md"))
        return f"{directory_of(index)}/file{index:06d}{extension}"

    def _content(self, path: str) -> bytes:
        if path.endswith(".png"):
            return b"\x89PNG\r\n\x1a\n" + self.rng.randbytes(self.rng.randint(2_000, 200_000))
        count = self.rng.randint(10, 60)
        start = self.rng.randrange(len(self.lines) - count)
        body = self.lines[start:start + count]
        body.insert(self.rng.randrange(count), f"# {path} {self.rng.random():.15f}")
        return ("\n".join(body) + "\n").encode()

    def write(self, out: object) -> None:
        write = out.write  # type: ignore[attr-defined]
        per_commit = -(-self.files // IMPORT_COMMITS)
        for start in range(0, self.files, per_commit):
            ops = [self._modify(path) for path in self.paths[start:start + per_commit]]
            write(self._commit(f"import files {start}..{start + len(ops) - 1}", ops))
        for number in range(HISTORY_COMMITS):
            write(self._commit(f"change {number}", self._history_ops()))

    def _history_ops(self) -> list[bytes]:
        ops = [self._modify(self.paths[self.rng.randrange(len(self.paths))]) for _ in range(self.rng.randint(1, 8))]
        if self.rng.random() < 0.2:
            index = self.rng.randrange(len(self.paths))
            old = self.paths[index]
            new = f"{directory_of(self.rng.randrange(self.files))}/moved{self.marks:06d}-{old.rsplit('/', 1)[1]}"
            self.paths[index] = new
            ops = [op for op in ops if old.encode() not in op] + [f"R {old} {new}\n".encode()]
        if self.rng.random() < 0.1:
            binaries = [path for path in self.paths if path.endswith(".png")]
            if binaries:
                ops.append(self._modify(self.rng.choice(binaries)))
        return ops

    def _modify(self, path: str) -> bytes:
        data = self._content(path)
        self.marks += 1
        return f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n"

    def _commit(self, message: str, ops: list[bytes]) -> bytes:
        self.stamp += 3600
        text = message.encode()
        head = (f"commit refs/heads/main\ncommitter Bench <bench@example.com> {self.stamp} +0000\n"
                f"data {len(text)}\n").encode() + text + b"\n"
        return head + b"".join(ops) + b"\n"


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def describe(repo: Path) -> str:
    """Files, objects and pack size of a generated repository, in one line."""
    counts = dict(line.split(": ") for line in _git("count-objects", "-v", cwd=repo).splitlines())
    files = len(_git("ls-tree", "-r", "--name-only", "main", cwd=repo).splitlines())
    return (f"{repo}: {files} files, {counts['in-pack']} objects, {int(counts['size-pack']) / 1024:.1f} MB packed, "
            f"{len(_git('rev-list', 'main', cwd=repo).splitlines())} commits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=LARGE_FILES)
    parser.add_argument("--quick", action="store_true", help=f"the small repository ({QUICK_FILES} files)")
    options = parser.parse_args()
    started = time.perf_counter()
    repo = ensure_repo(QUICK_FILES if options.quick else options.files)
    print(f"{describe(repo)} (ready in {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
