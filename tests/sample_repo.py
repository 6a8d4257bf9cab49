"""A tiny repository with a failing test, and the model script that fixes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.anthropic_server import tool_use

TEST_COMMAND = "python3 -m unittest discover -s tests -t ."

FILES = {
    "README.md": "# calc\n\nA very small calculator.\n",
    "calc.py": 'def add(a, b):\n    """Sum of a and b."""\n    return a - b\n',
    "tests/__init__.py": "",
    "tests/test_calc.py": (
        "import unittest\n\nfrom calc import add\n\n\n"
        "class AddTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
    ),
    ".forgecrew.yml": f"test_command: {TEST_COMMAND}\ninstructions: Keep the docstring.\n",
    "AGENTS.md": "Run the unit tests before finishing.\n",
}

ISSUE_TITLE = "add() subtracts instead of adding"
ISSUE_BODY = "calc.add(2, 3) returns -1; it should return 5. See calc.py."


def write_sample(root: Path) -> Path:
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def last_tool_result(request: Any) -> str:
    """The text of the last tool_result the client sent back to the model."""
    content = request["messages"][-1]["content"]
    blocks = [block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"]
    result = blocks[-1]["content"] if blocks else ""
    return result if isinstance(result, str) else " ".join(part.get("text", "") for part in result)


def fixing_script(new_body: str = "return a + b") -> list[Any]:
    """The model reads calc.py, fixes it, runs the tests and finishes."""

    def edit_after_reading(request: Any) -> Any:
        assert "return a - b" in last_tool_result(request), "read_file result should show the bug"
        return tool_use("edit_file", {"path": "calc.py", "old_text": "return a - b", "new_text": new_body})

    return [
        tool_use("read_file", {"path": "calc.py"}, text="Let me look at calc.py."),
        edit_after_reading,
        tool_use("run_command", {"command": TEST_COMMAND}),
        tool_use("finish", {"summary": "Fixed `add` to return the sum."}),
    ]


def fixing_after_tool_error(expected: str) -> Callable[[Any], Any]:
    """A script step: the last tool call must have come back as an error saying `expected`; then fix."""

    def check(request: Any) -> Any:
        result = request["messages"][-1]["content"][0]
        assert result["is_error"] is True and expected in result["content"], result
        return fixing_script()[0]

    return check
