"""The agent's command policy: a courtesy to well-meaning models, not a boundary.

The boundary is the sandbox (workers/sandbox): commands run where they can reach no credential,
no host network and no file outside their task. The denylist only stops a model from doing by
habit what forgecrew does itself (pushing, changing remotes) and tells it so.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from workers.tools.paths import ToolError

DEFAULT_DENIED = ("sudo", "git push", "git remote", "ssh", "scp")
ALWAYS_ALLOWED = ("cd", "pwd", "echo", "printf", "true", "false", "test", "[", "export", "set", "unset")
WRAPPERS = {"env", "command", "exec", "nohup", "time", "nice", "builtin", "timeout", "stdbuf", "xargs"}
SHELLS = {"sh", "bash", "dash", "zsh"}
SEPARATORS = {"&&", "||", ";", ";;", "|", "|&", "&", "(", ")", "{", "}"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_WRAPPER_ARGUMENT = re.compile(r"^(-.*|\d+(\.\d+)?[smhd]?)$")  # options and durations of wrappers


class CommandRefused(ToolError):
    """The command policy does not let the agent run this command."""


@dataclass(frozen=True)
class CommandPolicy:
    """Prefixes of commands the agent may (allowed; empty = any) and may never (denied) run.

    A guardrail against accidents, not a sandbox: the real protection is that commands run in
    one. Every simple command of a pipeline or list is checked; denied always wins.
    """

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = DEFAULT_DENIED

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", tuple(self.allowed))  # settings hand over lists
        object.__setattr__(self, "denied", tuple(self.denied))

    def check(self, command: str) -> None:
        """Raise CommandRefused naming the rule when any part of `command` is not permitted."""
        for words in simple_commands(command):
            for rule in self.denied:
                if _matches(words, rule):
                    raise CommandRefused(f"`{rule}` is not allowed here (refused: {' '.join(words)})")
            if self.allowed and not any(_matches(words, rule) for rule in self.allowed + ALWAYS_ALLOWED):
                raise CommandRefused(f"`{words[0]}` is not an allowed command; allowed: {', '.join(self.allowed)}")


def simple_commands(command: str) -> list[list[str]]:
    """Split a shell line into the normalized words of each simple command it runs."""
    text = command.replace("\n", " ; ").replace("`", " ; ").replace("$(", " ( ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise CommandRefused(f"cannot parse the command: {exc}") from None
    commands, current = [], []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            commands.extend(_unwrap(current))
            current = []
        else:
            current.append(token)
    return commands


def _unwrap(tokens: list[str]) -> list[list[str]]:
    """Drop assignments and wrappers (env, nohup, ...); look inside `bash -c '...'`."""
    while tokens and (_ASSIGNMENT.match(tokens[0]) or os.path.basename(tokens[0]) in WRAPPERS
                      or (_WRAPPER_ARGUMENT.match(tokens[0]) and len(tokens) > 1)):
        tokens = tokens[1:]
    if not tokens:
        return []
    name = os.path.basename(tokens[0])
    if name in SHELLS and "-c" in tokens[1:-1]:
        return simple_commands(tokens[tokens.index("-c", 1) + 1])
    words, skip_next = [name], False
    for token in tokens[1:]:
        if skip_next:
            skip_next = False
        elif token.startswith("-"):
            skip_next = name == "git" and token in ("-c", "-C")
        else:
            words.append(token)
    return [words]


def _matches(words: list[str], rule: str) -> bool:
    prefix = rule.split()
    return words[: len(prefix)] == prefix


def truncate_middle(text: str, limit: int) -> str:
    """Shorten `text` to about `limit` characters, keeping its head and tail and saying how much went."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
