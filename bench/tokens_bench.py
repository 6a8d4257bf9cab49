"""Cache-read share of input tokens over a scripted 10-turn session through the real agent loop.

Run: python bench/tokens_bench.py [--json]
The agent (workers.agent.Agent, the real LLMClient and anthropic SDK, the real toolbox in a
throwaway checkout, commands unsandboxed) talks to tests/fakes/anthropic_server.py, whose
PromptCache counts the way the Messages API does: a prefix is read only if it is byte-identical
to one written at an earlier breakpoint within 20 blocks, and written only above the model's
minimum cacheable length. The figure is

    tokens.cache_read_share = cache_read / (input + cache_read + cache_creation)

summed over the session's ten model calls. Target (issue 9): >= 0.80.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.forge.base import IssueInfo  # noqa: E402
from common.specialties import BUILTIN_PROFILES  # noqa: E402
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, Reply, text, tool_use, tool_uses  # noqa: E402
from workers.agent import Agent  # noqa: E402
from workers.budget import Budget  # noqa: E402
from workers.llm import LLMClient  # noqa: E402
from workers.prompts import system_prompt, task_message  # noqa: E402
from workers.sandbox.unsandboxed import UnsandboxedRunner  # noqa: E402
from workers.tools.toolbox import Toolbox  # noqa: E402
from workers.transcript import Transcript  # noqa: E402

MODEL = "claude-sonnet-4-6"
TURNS = 10
TARGET = 0.80


def make_repository(root: Path) -> Path:
    """A small Python project: a package of modules, its tests and a README."""
    checkout = root / "repo"
    package = checkout / "inventory"
    (checkout / "tests").mkdir(parents=True)
    package.mkdir()
    (checkout / "README.md").write_text(
        "# inventory\n\nTrack stock levels across warehouses.\n\n" + "\n".join(
            f"- `inventory/module_{n}.py`: stock rules for region {n}, with reorder points and safety stock."
            for n in range(12)) + "\n\nRun the tests with `python -m pytest -q`.\n")
    (package / "__init__.py").write_text('"""Stock levels."""\n')
    for n in range(12):
        body = "\n\n".join(
            f"def reorder_point_{n}_{k}(daily_demand: float, lead_days: int, safety: float) -> float:\n"
            f'    """Units at which region {n} reorders item class {k}."""\n'
            f"    return daily_demand * lead_days - safety\n" for k in range(6))
        (package / f"module_{n}.py").write_text(body + "\n")
        (checkout / "tests" / f"test_module_{n}.py").write_text(
            f"from inventory.module_{n} import reorder_point_{n}_0\n\n\n"
            f"def test_reorder_point_{n}() -> None:\n    assert reorder_point_{n}_0(2.0, 3, 1.0) == 7.0\n")
    return checkout


def script() -> list[Reply]:
    """Ten turns of a plausible session: explore, read (once ten files at a time), search, edit, check, finish."""
    fixed = "    return daily_demand * lead_days + safety\n"
    return [
        tool_use("list_files", {"path": ".", "max_depth": 2}, "Let me look at the layout first."),
        tool_use("read_file", {"path": "README.md"}),
        tool_use("search", {"pattern": "def reorder_point_3_", "path": "inventory"}),
        tool_uses([("read_file", {"path": f"inventory/module_{n}.py"}) for n in range(2, 7)]
                  + [("read_file", {"path": f"tests/test_module_{n}.py"}) for n in range(2, 7)],
                  "Reading the neighbouring modules and their tests side by side."),  # 21 blocks in one turn
        tool_use("read_file", {"path": "inventory/module_3.py"}, "The bug is in the sign of the safety stock."),
        tool_use("edit_file", {"path": "inventory/module_3.py", "old_text": "    return daily_demand * lead_days - safety\n"
                               "\n\ndef reorder_point_3_1", "new_text": fixed + "\n\ndef reorder_point_3_1"}),
        tool_use("read_file", {"path": "inventory/module_3.py", "start_line": 1, "end_line": 8}),
        tool_use("run_command", {"command": "grep -n 'lead_days + safety' inventory/module_3.py"}),
        tool_use("run_command", {"command": "git status --short 2>/dev/null || ls inventory"}),
        text("Fixed the sign of the safety stock in `reorder_point_3_0`: safety stock raises the reorder "
             "point. Reviewers: check the other item classes follow the same rule."),
    ]


def session(workdir: Path) -> dict[str, Any]:
    """One scripted session against a fresh fake (an empty cache): its usage and the request bodies sent."""
    checkout = make_repository(workdir)
    issue = IssueInfo(repo="acme/inventory", number=42, title="Reorder point ignores safety stock",
                      body="reorder_point_3_0 subtracts the safety stock; it should add it.")
    with FakeAnthropic(script()) as fake:
        llm = LLMClient(api_key=DEFAULT_KEY, base_url=fake.base_url, model=MODEL, max_retries=0)
        budget = Budget(max_turns=TURNS + 5, max_output_tokens=100_000, max_wall_seconds=600, max_cost_usd=100.0)
        agent = Agent(llm=llm, toolbox=Toolbox(checkout, sandbox=UnsandboxedRunner()), budget=budget,
                      transcript=Transcript(workdir / "transcript.jsonl", lambda value: value),
                      system=system_prompt(BUILTIN_PROFILES["backend"], repo=issue.repo,
                                           branch="forgecrew/42-reorder-point"))
        result = agent.run(task_message(issue, checkout, instructions={}, extra="",
                                        test_command="python -m pytest -q"))
        per_turn = [r.body for r in fake.message_requests]
    if result.outcome != "submitted" or result.turns != TURNS:
        raise RuntimeError(f"scripted session ended {result.outcome} after {result.turns} turns: {result.summary}")
    usage = result.usage
    total = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return {"share": usage.cache_read_tokens / total if total else 0.0, "input": usage.input_tokens,
            "cache_read": usage.cache_read_tokens, "cache_write": usage.cache_write_tokens,
            "requests": len(per_turn), "bodies": per_turn}


def measure(*, quick: bool, repeats: int) -> dict[str, Any]:
    """The bench protocol: raw samples of each figure, and the per-session usage as a series."""
    samples: list[float] = []
    rows: list[dict[str, Any]] = []
    for _ in range(max(1, repeats)):
        with tempfile.TemporaryDirectory(prefix="forgecrew-tokens-bench-") as tmp:
            row = session(Path(tmp))
        samples.append(row["share"])
        rows.append({key: value for key, value in row.items() if key != "bodies"})
    return {"figures": {"tokens.cache_read_share": samples}, "series": {"tokens_sessions": rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args()
    result = measure(quick=True, repeats=1)
    row = result["series"]["tokens_sessions"][0]
    if options.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{TURNS}-turn session: input {row['input']}, cache read {row['cache_read']}, "
          f"cache write {row['cache_write']} tokens")
    print(f"tokens.cache_read_share = {row['share']:.3f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
