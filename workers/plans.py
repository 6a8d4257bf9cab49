"""Plans before code: a read-only run whose finish summary is a plan, posted on the issue to be approved.

A task plans first when its issue carries the `forgecrew:plan` label or the repository's
`.forgecrew.yml` says `plan_first: true`, until a person with write access approves a plan
(`/forgecrew approve`, coordinator/operations.py). The planning run offers the agent only the
tools that read; it pushes nothing. Its plan goes into a new comment on the issue (each
revision a comment of its own, so the conversation reads in order) and onto the task, which
then waits in `awaiting_approval` with its lease released, as a finished run leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.db import Database
from common.errors import ForgecrewError
from common.forge.base import Forge, ForgeError
from common.leases import Claim, load_fenced, release
from common.specialties import PLAN_LABEL
from common.states import TaskState
from common.tool_names import FINISH_TOOL_NAME
from common.transitions import transition
from workers.repo_config import RepoConfig

MARKER = "<!-- forgecrew:plan -->"
# The agent's tools that only read the checkout (search runs grep in the sandbox, and writes nothing).
READ_ONLY_TOOLS = ("list_files", "read_file", "search")
PLAN_LIMIT = 60_000
# The progress comment's last words while the task waits.
ADVICE = ("The plan is in its own comment below. Comment `/forgecrew approve` to run the change with it, or "
          "`@forgecrew <changes to the plan>` for a revised plan.")  # GitHub takes 65,536 characters in a comment; the frame around the plan needs some


class PlanNotPosted(ForgecrewError):
    """The plan could not be put on the issue: nobody could approve it, so the run fails and says so."""


@dataclass(frozen=True)
class PlanState:
    """What the task holds of its plan when a run starts."""

    plan: str | None = None
    revision: int = 0
    feedback: str | None = None  # the changes a person asked for, for the next planning run
    approved_by: str | None = None


def needs_plan(state: PlanState, labels: tuple[str, ...], config: RepoConfig) -> bool:
    """Plan first when the label or the repository asks it, until someone approved a plan."""
    if state.approved_by:
        return False
    return config.plan_first or PLAN_LABEL in {label.lower() for label in labels}


def planning_tools(profile_tools: tuple[str, ...]) -> tuple[str, ...]:
    """The read-only tools the specialty allows; never empty, since an empty allowance means every tool."""
    allowed = tuple(name for name in READ_ONLY_TOOLS if not profile_tools or name in profile_tools)
    return allowed or (FINISH_TOOL_NAME,)


def plan_comment(task_id: int, plan: str, revision: int, *, feedback: str | None = None) -> str:
    """The plan's comment: the plan, and exactly what a person writes to approve or revise it."""
    heading = f"**forgecrew** · task {task_id} · plan" + (f" (revision {revision})" if revision > 1 else "")
    asked = f"\n\nRevised as asked:\n> {' '.join(feedback.split())[:500]}" if feedback and revision > 1 else ""
    return (f"{MARKER}\n{heading}{asked}\n\n{plan.strip()[:PLAN_LIMIT]}\n\n---\n"
            "Nothing is changed until a person with write access approves this plan:\n"
            "- `/forgecrew approve` runs the change with this plan;\n"
            "- `@forgecrew <changes to the plan>` asks for a revised plan;\n"
            "- `/forgecrew cancel` drops the task.")


def post_plan(forge: Forge, repo: str, number: int, body: str) -> int:
    """Post the plan's comment; a refusal becomes PlanNotPosted with what the forge said."""
    try:
        return forge.comment(repo, number, body)
    except ForgeError as exc:
        raise PlanNotPosted(f"the plan could not be posted on {repo}#{number}: {exc}") from None


def record_plan(db: Database, held: Claim, *, plan: str, revision: int, comment_id: int, detail: str) -> None:
    """Keep the plan on the task and let it wait: running -> awaiting_approval, the lease released."""
    with db.session() as session:
        row = load_fenced(session, held)
        row.plan, row.plan_revision, row.plan_comment_id, row.plan_feedback = plan, revision, comment_id, None
        transition(session, row, TaskState.AWAITING_APPROVAL, actor=held.owner, detail=detail[:1000])
        release(row)
