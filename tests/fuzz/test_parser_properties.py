"""Hypothesis over the comment-command parser: any text at all, commands hidden in code and quotes,
and adversarial runs of backticks, tildes and `>` meant to make its regular expressions backtrack."""

from __future__ import annotations

import time
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from coordinator.conversation.parse import COMMANDS, MAX_ARGUMENT, MAX_CHARS, Command, parse
from tests.fuzz.budget import fuzz

NAMES = {*COMMANDS, "request", "unknown"}
PARSE_BOUND = 1.0  # seconds for one parse of up to MAX_CHARS (it takes milliseconds): a hang bound, not a benchmark

# Text that mixes Markdown syntax, the command words and characters that are not what they look like.
markdown_bits = st.sampled_from(["/forgecrew", "@forgecrew", "/forgecrew retry", "@forgecrew fix it", "`", "``",
                                 "```", "~~~", "> ", ">", "    ", "\t", "\n", "\r\n", "\r", " ", "retry", "route",
                                 "backend", "\u200b", "\u202e", "\ufeff", "\x00", "\x1b", "／", "ｆ", "\u0301",
                                 "<!--", "-->", "\\", "*", "_", "#"])
markdownish = st.lists(st.one_of(markdown_bits, st.text(max_size=8)), max_size=60).map("".join)
anything = st.one_of(st.text(), markdownish, st.none())


def check_command(result: Command | None) -> None:
    """What parse() gives back is always storable and quotable."""
    if result is None:
        return
    assert result.name in NAMES
    assert len(result.argument) <= MAX_ARGUMENT
    assert result.argument == result.argument.strip()
    for ch in result.argument:
        assert ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"), f"control/format char {ch!r} kept"


@fuzz(600)
@given(body=anything)
def test_parse_never_raises_and_its_command_is_bounded_and_clean(body: str | None) -> None:
    check_command(parse(body))


@fuzz(30)
@given(filler=st.text(min_size=MAX_ARGUMENT, max_size=MAX_ARGUMENT + 3000), word=st.sampled_from(
    ["/forgecrew retry ", "/forgecrew ", "@forgecrew ", "/forgecrew nonsense "]))
def test_a_long_argument_is_cut_at_max_argument(filler: str, word: str) -> None:
    result = parse(word + "x" + filler)
    assert result is not None
    check_command(result)


command_line = st.sampled_from(["/forgecrew retry", "/forgecrew cancel", "/forgecrew route backend",
                                "/forgecrew approve", "/forgecrew help", "@forgecrew please fix the bug",
                                "/forgecrew make it faster", "@forgecrew, also add tests"])
# Prose around the hidden command that cannot itself hold one, or open or close a code block.
prose = st.text(alphabet=st.characters(blacklist_characters="/@`~>\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                                       blacklist_categories=["Cs"]), max_size=40).map(str.lstrip)


@st.composite
def hidden(draw: st.DrawFn) -> str:
    """A comment whose only command sits in a fenced block, an indented block, a quote or inline code."""
    command = draw(command_line)
    how = draw(st.sampled_from(["fence", "unclosed fence", "indent", "quote", "inline", "inline after prose"]))
    if how in ("fence", "unclosed fence"):
        fence = draw(st.sampled_from(["`", "~"])) * draw(st.integers(3, 8))
        opener = " " * draw(st.integers(0, 3)) + fence + draw(st.sampled_from(["", "sh", "text", " markdown"]))
        inner = [draw(prose), command, draw(st.sampled_from(["", fence[:2], "> x"]))]
        block = "\n".join([opener, *inner] + ([fence] if how == "fence" else []))
    elif how == "indent":
        block = "\n".join(draw(st.sampled_from(["    ", "\t", "     "])) + line for line in [command, "more"])
    elif how == "quote":
        block = "\n".join(draw(st.sampled_from(["> ", ">", " > ", ">> "])) + line
                          for line in [draw(prose), command])
    else:
        ticks = "`" * draw(st.integers(1, 4))
        span = f"{ticks}{command}{ticks}"
        block = f"{draw(prose)} {span} {draw(prose)}" if how == "inline after prose" else span
    return "\n".join([draw(prose), "", block, "", draw(prose)])


@fuzz(400)
@given(body=hidden())
def test_a_command_in_code_or_a_quote_never_runs(body: str) -> None:
    assert parse(body) is None, body


@fuzz(200)
@given(before=prose, command=command_line, after=prose)
def test_the_same_command_as_prose_does_run(before: str, command: str, after: str) -> None:
    """The counterpart of the property above: what it hides is found when it is not hidden."""
    result = parse(f"{before}\n{command} {after}")
    assert result is not None and result.name != "help" or command == "/forgecrew help", (command, result)


look_alikes = st.sampled_from(["／forgecrew retry", "/ｆorgecrew retry", "/forgecr\u200bew retry", "/forgecrеw retry",
                               "\u200b/forgecrew retry", "@forgecrew\u200bbot hi",
                               "@ｆorgecrew hi", "@forgecrew-bot hi", "x@forgecrew hi", "/forgecrewretry"])


@fuzz(100)
@given(text=look_alikes, before=prose)
def test_look_alike_command_words_are_not_commands(text: str, before: str) -> None:
    result = parse(f"{before}\n{text}")
    assert result is None or result.name != "retry", (text, result)
    assert result is None or not (result.name == "request" and text.startswith(("@ｆ", "x@", "@forgecrew-"))), result


adversarial = st.builds(
    lambda unit, count, tail: (unit * count + tail)[:MAX_CHARS + 10],
    st.sampled_from(["`", "``", "`x", "` ", "~", "~~~\n", "```\n", ">", "> ", "\n", "\r", "@forgecrew ", "@forgecrew\n",
                     "/forgecrew `", "`@forgecrew`", " \t", "\\`", "`\n`", "<!--", "\u200b", "a`b``c```"]),
    st.one_of(st.integers(1, 200), st.integers(MAX_CHARS // 8, MAX_CHARS)),
    st.sampled_from(["", "`", "x", "\n/forgecrew retry", "@forgecrew go"]),
)


@fuzz(60)
@given(body=adversarial)
def test_adversarial_markdown_parses_in_bounded_time(body: str) -> None:
    started = time.monotonic()
    result = parse(body)
    elapsed = time.monotonic() - started
    assert elapsed < PARSE_BOUND, f"parse took {elapsed:.2f}s on {body[:40]!r}… ({len(body)} chars)"
    check_command(result)


def test_text_past_max_chars_is_not_read() -> None:
    assert parse("x" * MAX_CHARS + "\n/forgecrew retry") is None
    assert parse("x" * (MAX_CHARS - 20) + "\n/forgecrew retry") == Command("retry")
