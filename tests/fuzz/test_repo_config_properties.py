"""Hypothesis over `.forgecrew.yml`, which whoever wrote the target repository controls.

Whatever the file holds (random YAML, alias and merge-key bombs, deep nesting, values PyYAML cannot
construct, bytes that are no UTF-8, a file past the size cap, a link out of the checkout, a
directory of that name), load_repo_config gives a RepoConfig or raises RepoConfigError naming the
file, quickly, and never says what the file (or the file a link points to) contains.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ForgecrewError
from workers.repo_config import CONFIG_LIMIT, CONFIG_NAME, RepoConfig, RepoConfigError, load_repo_config
from tests.fuzz.budget import fuzz

SECRET = "hunter2-host-secret"  # put in the files; an error message must never repeat it
LOAD_BOUND = 2.0  # seconds per load (it takes milliseconds): a hang bound, not a benchmark
KEYS = list(RepoConfig.model_fields)


def place(checkout: Path, content: bytes | None = None, *, kind: str = "file") -> Path:
    """Put `.forgecrew.yml` in the checkout: a file with `content`, a directory, or a link outside."""
    target = checkout / CONFIG_NAME
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    if kind == "file":
        target.write_bytes(content or b"")
    elif kind == "directory":
        target.mkdir()
        (target / "config").write_text(f"test_command: {SECRET}\n")
    else:  # a link out of the checkout, to a file that is valid YAML (so only the link can refuse it)
        outside = checkout.parent / "outside.yml"
        outside.write_text(f"test_command: cat /etc/{SECRET}\n")
        target.symlink_to(outside if kind == "link" else Path("..") / "outside.yml")
    return target


def load(checkout: Path) -> RepoConfig | RepoConfigError:
    """load_repo_config, its error returned; anything else it raises fails the test where it happens."""
    started = time.monotonic()
    try:
        result: RepoConfig | RepoConfigError = load_repo_config(checkout)
    except RepoConfigError as exc:
        result = exc
    elapsed = time.monotonic() - started
    assert elapsed < LOAD_BOUND, f"loading {CONFIG_NAME} took {elapsed:.2f}s"
    return result


def check_refusal(result: RepoConfig | RepoConfigError) -> None:
    """A refusal is the project's error, names the file, stays short and quotes nothing of it."""
    if isinstance(result, RepoConfig):
        return
    assert isinstance(result, ForgecrewError)
    message = str(result)
    assert CONFIG_NAME in message, message
    assert SECRET not in message, message
    assert len(message) < 2_000, f"a {len(message)}-character message"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    path = tmp_path / "checkout"
    path.mkdir()
    return path


scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                   st.just(SECRET), st.binary(max_size=10))
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=8)
documents = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.just(f"{SECRET} key")), value,
                            max_size=8)


@fuzz(300)
@given(document=st.one_of(documents, value))
def test_any_yaml_document_loads_or_is_refused_clearly(checkout: Path, document: object) -> None:
    place(checkout, yaml.safe_dump(document, allow_unicode=True).encode())
    result = load(checkout)
    check_refusal(result)
    if isinstance(result, RepoConfig) and isinstance(document, dict):
        assert set(document) <= set(KEYS), "an unknown key was accepted"


@fuzz(300)
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_bytes_load_or_are_refused_clearly(checkout: Path, content: bytes) -> None:
    place(checkout, content)
    check_refusal(load(checkout))


def alias_bomb(levels: int, width: int) -> str:
    """Billion laughs: each level a list of `width` aliases of the level below."""
    lines = [f'a0: &a0 ["{SECRET}"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ninstructions: *a{levels - 1}\n"


def merge_bomb(levels: int, width: int) -> str:
    """The same through merge keys (`<<`), which copy the mappings they merge."""
    lines = ["m0: &m0 {k0: 1, k1: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * width)}], k{i + 1}: 3}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE = [
    lambda n: alias_bomb(min(n, 12), 9), lambda n: merge_bomb(min(n, 12), 9),
    lambda n: "[" * n * 500, lambda n: "{a: " * n * 500, lambda n: "- " * n * 500, lambda n: "&a [*a]",
    lambda n: "test_timeout: 1" + "0" * n * 500, lambda n: "test_timeout: !!int x", lambda n: "test_timeout: !!float x",
    lambda n: "test_command: 2001-13-45", lambda n: f"x: !!timestamp 2026-{n % 99}-99", lambda n: "test_command: 1e999",
    lambda n: "instructions: !!binary '@@@'", lambda n: "instructions: !!binary /w==", lambda n: "? [a]\n: 1",
    lambda n: f"test_command: !!python/object/apply:os.system ['echo {SECRET}']", lambda n: "!!set {a, b}",
    lambda n: "test_command: !!omap [a]", lambda n: f"test_command: '{SECRET}\x00'", lambda n: "\ufeff" * n,
    lambda n: "%YAML 9.9\n---\na: 1", lambda n: "--- 1\n--- 2\n", lambda n: f"test_timeout: -{n}",
    lambda n: "\n".join(f"k{i}: {SECRET}" for i in range(n * 50)), lambda n: f"test_command: &x [*x]\n",
    lambda n: f"instructions: {'x' * (CONFIG_LIMIT - 20)}", lambda n: f"specialty: {{{SECRET}: 1}}",
]


@fuzz(120)
@given(build=st.sampled_from(HOSTILE), size=st.integers(1, 200))
def test_bombs_and_unconstructible_values_are_refused_quickly(checkout: Path, build: object, size: int) -> None:
    text = build(size)  # type: ignore[operator]
    place(checkout, text.encode("utf-8", "surrogatepass")[: CONFIG_LIMIT * 2])
    check_refusal(load(checkout))


@fuzz(10)
@given(extra=st.integers(1, 5 * CONFIG_LIMIT))
def test_a_file_past_the_size_cap_is_refused_by_its_size(checkout: Path, extra: int) -> None:
    place(checkout, b"instructions: " + b"y" * (CONFIG_LIMIT + extra))
    result = load(checkout)
    assert isinstance(result, RepoConfigError) and str(CONFIG_LIMIT) in str(result)
    check_refusal(result)


@pytest.mark.parametrize("kind", ["link", "relative link", "directory"])
def test_a_link_out_of_the_checkout_or_a_directory_is_refused(checkout: Path, kind: str) -> None:
    place(checkout, kind=kind)
    result = load(checkout)
    assert isinstance(result, RepoConfigError), f"{kind} was read: {result!r}"
    check_refusal(result)


def test_a_fifo_is_refused_without_hanging(checkout: Path) -> None:
    os.mkfifo(checkout / CONFIG_NAME)
    result = load(checkout)
    assert isinstance(result, RepoConfigError) and "not a regular file" in str(result)


def test_a_valid_file_still_loads(checkout: Path) -> None:
    """The counterpart of the refusals: the strategies are not refusing everything."""
    place(checkout, b"test_command: pytest -q\ntest_timeout: 60\nplan_first: true\n")
    result = load(checkout)
    assert isinstance(result, RepoConfig)
    assert (result.test_command, result.test_timeout, result.plan_first) == ("pytest -q", 60, True)
