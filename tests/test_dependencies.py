"""Dependencies between issues: the body parser (hostile bodies too), the hold reasons, cycles, clearing by
webhook and by the forge (PostgreSQL; the real app for the webhooks)."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db import Database
from common.forge.base import ForgeError, IssueInfo
from common.models import Task, TaskDependency
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator import dependencies
from coordinator.app import create_app
from coordinator.dependencies import DependencyChecks, admit_new, hold_reason, parse_blockers
from tests.factories import make_task
from tests.support import headers, labeled_issue, payload, wait_for

REPO = "Codertocat/Hello-World"


def blockers(body: str, number: int | None = 9) -> list[int]:
    return parse_blockers(body, repo=REPO, issue_number=number)


# -- the parser ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    ("Depends on #3", [3]),
    ("this is blocked by #12.", [12]),
    ("DEPENDS ON #3 and BLOCKED BY #4", [3, 4]),
    ("Depends on: #3, #4 and #5", [3, 4, 5]),
    ("- depends on #3\n- [ ] blocked by #4\n* Depends-on #5", [3, 4, 5]),
    ("Depends-on: #6; #7 & #8", [6, 7, 8]),
    (f"depends on {REPO}#3 and codertocat/hello-world#4", [3, 4]),  # this repository, named (any case)
    ("depends on other/repo#3 and #4", [4]),  # another repository's is not ours to wait for
    ("depends on #9 and #3", [3]),  # itself: ignored
    ("depends on #3 (the parser) and #4", [3]),  # the list ends at the first word that is no reference
    ("depends on #3, depends on #3, blocked by #3", [3]),
    ("depends on #0 and #99999999999", []),  # no issue 0; past a 32-bit number
    ("dependson #3, undepends on #4, depends on 3, depends on issue #4", []),
    ("blocked by\n#3", []),  # the reference belongs on the phrase's line
    ("I depend on nobody. #3 is related.", []),
])
def test_blockers_are_read_from_prose(body: str, expected: list[int]) -> None:
    assert blockers(body) == expected


def test_code_quotes_and_comments_are_not_read() -> None:
    body = "\n".join([
        "```", "depends on #1", "```",
        "~~~~python", "blocked by #2", "~~~", "still code: depends on #3", "~~~~",
        "> depends on #4 (someone else's words)",
        "    depends on #5 (indented code)",
        "Run `depends on #6` in a shell.",
        "<!-- depends on #7 -->",
        "After all that: depends on #8",
    ])
    assert blockers(body) == [8]


def test_an_unclosed_fence_hides_the_rest() -> None:
    assert blockers("depends on #3\n```\ndepends on #4") == [3]


def test_hostile_bodies_are_bounded() -> None:
    assert blockers("depends on " + ", ".join(f"#{n}" for n in range(10, 200))) == list(range(10, 30))  # first 20
    huge = ("x" * 70_000) + " depends on #3"  # past GitHub's 65,536-character body: not read
    assert blockers(huge) == []
    assert blockers("depends on #" + "9" * 100_000) == []
    assert blockers("depends on " * 20_000) == []
    assert blockers("```" * 30_000 + "\ndepends on #3") == []  # one long fence line opens a block to the end
    assert blockers("<!--" * 15_000 + " depends on #3") == [3]  # an unclosed comment is text


def test_unicode_digits_and_look_alikes_are_not_references() -> None:
    assert blockers("depends on #٣ and #３ and ＃4") == []  # Arabic-Indic and full-width digits, full-width sign
    assert blockers("dépend de #3; Depends on #5 ✅ — blocked by #6 🚧") == [5, 6]


# -- hold reasons, cycles and clearing (PostgreSQL) -------------------------------------------------

def new_task(db: Database, settings: Settings, number: int, body: str = "") -> tuple[int, str | None]:
    task_id = make_task(db, repo=REPO, issue_number=number, body=body)
    with db.session() as session:
        return task_id, admit_new(session, task_id, body, settings, repo=REPO, issue_number=number, actor="test")


def move(db: Database, task_id: int, *states: TaskState, **fields: Any) -> None:
    with db.session() as session:
        task = session.get(Task, task_id)
        for state in states:
            transition(session, task, state, actor="test")
        for key, value in fields.items():
            setattr(task, key, value)


def state(db: Database, task_id: int) -> tuple[str, str | None]:
    with db.session() as session:
        task = session.get(Task, task_id)
        return task.state, task.wait_reason


@pytest.mark.integration
def test_a_task_waits_for_its_blockers_and_the_reason_follows_them(db: Database, settings: Settings) -> None:
    blocker, held = new_task(db, settings, 3)
    assert held is None and state(db, blocker)[0] == "triaged"
    dependent, held = new_task(db, settings, 5, "Depends on #3 and #4")
    assert held == "blocked by #3 (its forgecrew task 1 is triaged), #4 (open, no forgecrew task yet)"
    assert state(db, dependent) == ("waiting", held)
    move(db, blocker, TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN, pr_number=12)
    with db.session() as session:
        reason = hold_reason(session, session.get(Task, dependent), settings)
    assert reason == "blocked by #3 (its forgecrew PR is not merged yet), #4 (open, no forgecrew task yet)"
    move(db, blocker, TaskState.DONE)  # its PR merged; #4 is still open
    with db.session() as session:
        assert hold_reason(session, session.get(Task, dependent), settings) == (
            "blocked by #4 (open, no forgecrew task yet)")
        rows = {row.blocker_issue: (row.state, row.cleared_reason) for row in session.scalars(select(TaskDependency))}
    assert rows == {3: ("cleared", "#3's forgecrew PR #12 was merged"), 4: ("waiting", None)}
    with db.session() as session:
        assert dependencies.clear_blocker(session, REPO.lower(), 4, "#4 was closed") == [dependent]
        assert hold_reason(session, session.get(Task, dependent), settings) is None


@pytest.mark.integration
def test_a_dependency_closing_a_cycle_is_refused(db: Database, settings: Settings) -> None:
    first, held = new_task(db, settings, 1, "blocked by #2")
    assert held == "blocked by #2 (open, no forgecrew task yet)"
    second, held = new_task(db, settings, 2, "depends on #3")
    third, held = new_task(db, settings, 3, "Depends on: #1")
    assert held == "refused: its dependencies form a cycle #3 → #1 → #2 → #3"
    with db.session() as session:
        task = session.get(Task, third)
        assert (task.state, task.failure_reason) == ("failed", held)
        # kept, so a `/forgecrew retry` waits for #1 instead of starting past it
        assert [row.blocker_issue for row in session.scalars(
            select(TaskDependency).where(TaskDependency.task_id == third))] == [1]
    assert state(db, second)[0] == "waiting"  # the others wait as before
    with db.session() as session:  # a failed task's rows are no edge (3 → 1 would close 1 → 3 → 1)
        assert dependencies.find_cycle(session, REPO, 1, [3]) is None
        assert dependencies.find_cycle(session, REPO, 3, [1]) == [3, 1, 2, 3]


@pytest.mark.integration
def test_a_cycle_is_found_through_a_body_without_rows(db: Database, settings: Settings) -> None:
    other = make_task(db, repo=REPO, issue_number=2, body="depends on #1")  # intake has not recorded it
    mine, held = new_task(db, settings, 1, "depends on #2")
    assert held == "refused: its dependencies form a cycle #1 → #2 → #1" and other


class FakeForge:
    def __init__(self, states: dict[int, str]) -> None:
        self.states, self.asked, self.comments = states, [], []

    def get_issue(self, repo: str, number: int) -> IssueInfo:
        self.asked.append(number)
        if self.states.get(number) == "error":
            raise ForgeError("502 from the forge")
        return IssueInfo(repo, number, "t", "b", state=self.states.get(number, "open"))

    def pull_state(self, repo: str, number: int) -> str:
        self.asked.append(f"pull {number}")
        return self.states.get(number, "open")

    def comment(self, repo: str, number: int, body: str) -> int:
        self.comments.append((number, body))
        return 77


@pytest.mark.integration
def test_the_sweep_asks_the_forge_about_blockers_at_once_then_once_an_interval(db: Database,
                                                                              settings: Settings) -> None:
    dependent, _ = new_task(db, settings, 5, "depends on #3, #4")  # #3 closed before anyone wrote this
    other, _ = new_task(db, settings, 6, "depends on #8")
    forge, released, now = FakeForge({3: "closed", 4: "error"}), [], [1000.0]
    checks = DependencyChecks(db, lambda _id: forge, lambda repo: released.append(repo), clock=lambda: now[0])
    checks.PER_SWEEP = 2
    checks.sweep()
    assert forge.asked == [3, 4] and released == [REPO]  # at once; #8 is past this round's limit
    with db.session() as session:
        assert hold_reason(session, session.get(Task, dependent), settings) == (
            "blocked by #4 (open, no forgecrew task yet)")
    checks.sweep()
    assert forge.asked == [3, 4, 8]  # #8 at the next round; #4 not again within the interval
    now[0] += settings.dependency_check_seconds + 1
    forge.states[4] = "closed"
    checks.sweep()
    assert forge.asked == [3, 4, 8, 4, 8] and released == [REPO, REPO]  # the interval is over for both
    with db.session() as session:
        assert hold_reason(session, session.get(Task, dependent), settings) is None
        assert hold_reason(session, session.get(Task, other), settings) == "blocked by #8 (open, no forgecrew task yet)"


@pytest.mark.integration
def test_the_sweep_finds_a_blockers_merged_pr_on_the_forge(db: Database, settings: Settings) -> None:
    blocker, _ = new_task(db, settings, 3)
    move(db, blocker, TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN, pr_number=12)
    dependent, _ = new_task(db, settings, 5, "depends on #3")
    forge = FakeForge({12: "open"})
    checks = DependencyChecks(db, lambda _id: forge, lambda repo: None)
    assert checks.check_blockers() == [] and forge.asked == ["pull 12", 3]  # PR open, issue open: waits
    forge.states[12], checks._asked = "merged", {}
    assert checks.check_blockers() == [REPO]
    with db.session() as session:
        [row] = session.scalars(select(TaskDependency)).all()
        assert row.cleared_reason == "#3's forgecrew PR #12 was merged (seen on the forge)"
        assert hold_reason(session, session.get(Task, dependent), settings) is None


def test_the_local_forge_reports_a_pr_merged_once_its_base_contains_the_branch(tmp_path: Path) -> None:
    from common.forge.local import LocalForge
    from tests.sample_repo import write_sample

    forge = LocalForge(Settings(local_forge_root=tmp_path / "forge", webhook_secret="x" * 32))
    bare = forge.create_repo("acme/calc", write_sample(tmp_path / "sample"))
    git = ["git", "--git-dir", str(bare)]
    main = subprocess.run([*git, "rev-parse", "main"], capture_output=True, text=True, check=True).stdout.strip()
    tree = subprocess.run([*git, "rev-parse", "main^{tree}"], capture_output=True, text=True, check=True).stdout.strip()
    change = subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit-tree", tree, "-p",
                             main, "-m", "change"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([*git, "update-ref", "refs/heads/topic", change], check=True)
    pr = forge.open_or_update_pr("acme/calc", branch="topic", base="main", title="t", body="b", draft=False)
    assert forge.pull_state("acme/calc", pr.number) == "open"
    subprocess.run([*git, "update-ref", "refs/heads/main", change], check=True)
    assert forge.pull_state("acme/calc", pr.number) == "merged"


@pytest.mark.integration
def test_the_sweep_comments_once_on_a_refused_cycle(db: Database, settings: Settings) -> None:
    new_task(db, settings, 1, "depends on #2")
    refused, _ = new_task(db, settings, 2, "depends on #1")
    forge = FakeForge({})
    checks = DependencyChecks(db, lambda _id: forge, lambda repo: None)
    assert checks.announce_cycles() == [refused]
    assert checks.announce_cycles() == []
    [(number, body)] = forge.comments
    assert number == 2 and "#2 → #1 → #2" in body and "depends on" in body


@pytest.mark.integration
def test_the_sweep_says_once_what_a_dependent_waits_for(db: Database, settings: Settings) -> None:
    waiting, _ = new_task(db, settings, 5, "depends on #3")
    new_task(db, settings, 6)  # nothing to wait for: no comment
    forge = FakeForge({})
    checks = DependencyChecks(db, lambda _id: forge, lambda repo: None)
    assert checks.announce_waiting() == [waiting] and checks.announce_waiting() == []
    [(number, body)] = forge.comments
    assert number == 5 and "why: blocked by #3 (open, no forgecrew task yet)" in body
    with db.session() as session:
        assert session.get(Task, waiting).progress_comment_id == 77  # the worker edits it when the task runs


# -- webhooks: intake holds, a merge or a close releases ------------------------------------------

@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_reconciler=False)) as test_client:
        yield test_client


def post(client: TestClient, event: str, data: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(data).encode()
    response = client.post("/webhooks/github", content=body, headers=headers(event, body))
    assert response.status_code in (200, 202), response.text
    assert client.app.state.services.sender.wait_idle()
    return response.json()


def issue_closed(number: int) -> dict[str, Any]:
    data = copy.deepcopy(payload("issues", "opened"))
    data["action"] = "closed"
    data["issue"].update(number=number, state="closed", state_reason="completed")
    return data


@pytest.mark.integration
def test_intake_holds_a_dependent_and_a_closed_blocker_releases_it(client: TestClient, db: Database) -> None:
    answer = post(client, "issues", labeled_issue("forgecrew:backend", number=5, body="Blocked by #3"))
    task_id = answer["task_id"]
    assert answer["status"] == f"task {task_id} created (backend); blocked by #3 (open, no forgecrew task yet)"
    assert state(db, task_id)[0] == "waiting"
    closed = post(client, "issues", issue_closed(3))
    assert closed["status"].endswith(f"unblocked task(s) {task_id}")

    def released() -> bool:
        return state(db, task_id) == ("queued", None)

    wait_for(released, timeout=10, what="the dependent released after the close")
    with db.session() as session:
        [row] = session.scalars(select(TaskDependency)).all()
        assert (row.state, row.cleared_reason) == ("cleared", "#3 was closed (completed) by Codertocat")
