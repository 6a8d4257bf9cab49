"""Find a forgecrew command in a comment's Markdown, treating the whole text as hostile.

Only what a person wrote as prose counts: lines inside fenced or indented code blocks, quoted
lines (`>`, as in a reply that quotes someone, and the lines that continue the quote), HTML
comments (which GitHub does not show) and inline code spans are skipped, so quoting a
command or showing one in an example never runs it. The command word must be plain ASCII
(`/forgecrew` at the start of a line, `@forgecrew` as a word of its own): look-alike letters, full-width slashes or
zero-width characters make it prose. Text past MAX_CHARS (GitHub's own limit on a comment) is
not read.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_CHARS = 65_536
MAX_ARGUMENT = 4_000
COMMANDS = ("retry", "cancel", "route", "status", "help", "approve")
HELP = """forgecrew answers these, from people with write access to the repository:

- `/forgecrew status`: the task of this issue or pull request, its state and its pull request
- `/forgecrew retry`: queue a failed or cancelled task again
- `/forgecrew cancel`: stop the task (a running agent stops at its next step)
- `/forgecrew route <specialty>`: move a task that has not started to another specialty's queue
- `/forgecrew approve`: run the change with the plan forgecrew posted (reply `@forgecrew <changes>` to \
revise the plan instead)
- `/forgecrew help`: this list
- `@forgecrew <request>`: start a task on this issue with the request as its instruction
- on forgecrew's pull request, `@forgecrew <what to change>` (or a review requesting changes): a follow-up \
commit on the same pull request"""

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+).*?\1", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)  # unclosed, it hides the rest, as on GitHub
_SLASH = re.compile(r"^/forgecrew(?![\w-])[ \t]*(.*)$")
_MENTION = re.compile(r"(?<![\w.@/-])@forgecrew(?![\w-])[ \t,:]*")


@dataclass(frozen=True)
class Command:
    """`name` is one of COMMANDS, "request" (an @mention's text), or "unknown" (answered with help)."""

    name: str
    argument: str = ""


def parse(body: str | None) -> Command | None:
    """The first command in `body`, or None when a person only talked."""
    if not body:
        return None
    lines = _prose_lines(body[:MAX_CHARS])
    for masked, raw in lines:
        slash = _SLASH.match(masked)
        if slash:
            return _slash_command(raw[slash.start(1):])
    for index, (masked, raw) in enumerate(lines):  # what follows a mention is the request; a bare mention is talk
        mention = _MENTION.search(masked)
        if mention:
            request = _clean("\n".join([raw[mention.end():], *(line for _, line in lines[index + 1:])]))
            return Command("request", request) if re.search(r"\w", request) else None
    return None


def _slash_command(rest: str) -> Command:
    word, _, argument = rest.strip().partition(" ")
    word = word.lower()
    if not word:
        return Command("help")
    if word in COMMANDS:
        return Command(word, _clean(argument))
    return Command("unknown", _clean(rest))


def _prose_lines(text: str) -> list[tuple[str, str]]:
    """(masked, raw) for each line a person wrote as prose, without code blocks and quotes.

    `masked` has inline code blanked out, at the same length, so a command is looked for only in
    prose while what it says (`rename `foo``) is taken from `raw` at the same offsets.
    """
    lines: list[tuple[str, str]] = []
    fence: str | None = None
    quoted = False  # a quote goes on over the lines after it until a blank line (lazy continuation)
    text = _HTML_COMMENT.sub(lambda hidden: "\n" * hidden.group(0).count("\n"), text)  # GitHub shows none of it
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        opener = _FENCE.match(raw)
        if fence is not None:
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = None
            continue
        if opener:
            fence, quoted = opener.group(1), False
            continue
        if raw.lstrip().startswith(">"):
            quoted = True
            continue
        if quoted and raw.strip():
            continue
        quoted = False
        if raw.startswith(("    ", "\t")):
            continue
        masked = _INLINE_CODE.sub(lambda span: " " * len(span.group(0)), raw)
        lead = len(raw) - len(raw.lstrip())  # a command after inline code is not at the line's start
        lines.append((masked[lead:].rstrip(), raw[lead:].rstrip()))
    return lines


def _clean(text: str) -> str:
    """Untrusted text made safe to store and quote: no control or invisible format characters, bounded."""
    kept = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"))
    return kept.strip()[:MAX_ARGUMENT]
