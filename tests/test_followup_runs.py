"""Follow-up runs on the local forge, in process: the PR's branch head as it is, and never a force over a person."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.models import Followup, Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.pipeline_support import REPO, load, run_task
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script

pytestmark = pytest.mark.integration
SUB = "return a + b\n\n\ndef sub(a, b):\n    return a - b"


def open_pr(settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic) -> Task:
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE, body=ISSUE_BODY)
    model.add(*fixing_script())
    assert run_task(settings, db, forge, task_id).state == "pr_open"
    return load(db, task_id)


def start_followup(db: Database, task: Task, *, instructions: str, comment_id: int | None = None) -> int:
    """What coordinator/followups/runner.py leaves for a worker: the follow-up running, the task queued."""
    with db.session() as session:
        row = Followup(task_id=task.id, delivery_id=f"d-{instructions[:20]}", kind="comment", author="local",
                       instructions=instructions, comment_id=comment_id, state="running")
        session.add(row)
        transition(session, session.get(Task, task.id), TaskState.QUEUED, actor="test", detail="follow-up")
        session.flush()
        return row.id


def person_pushes(forge: LocalForge, branch: str, tmp: Path, name: str, text: str) -> str:
    """A person's commit on the PR's branch, pushed the ordinary way; its sha."""
    clone = tmp / f"person-{name}"
    env = {**os.environ, "GIT_AUTHOR_NAME": "Pat", "GIT_AUTHOR_EMAIL": "pat@example.com",
           "GIT_COMMITTER_NAME": "Pat", "GIT_COMMITTER_EMAIL": "pat@example.com"}
    run = lambda *args, cwd=clone: subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                                                  capture_output=True, text=True).stdout.strip()
    run("clone", "--quiet", "--branch", branch, str(forge.bare_path(REPO)), str(clone), cwd=tmp)
    (clone / name).write_text(text)
    run("add", name)
    run("commit", "--quiet", "-m", f"Pat adds {name}")
    run("push", "--quiet", "origin", branch)
    return run("rev-parse", "HEAD")


def branch_head(forge: LocalForge, branch: str, rev: str = "") -> str:
    return subprocess.run(["git", "--git-dir", str(forge.bare_path(REPO)), "rev-parse", f"{branch}{rev}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def first_message_text(request: Any) -> str:
    content = request["messages"][0]["content"]
    return content if isinstance(content, str) else "\n".join(block.get("text", "") for block in content)


def test_a_follow_up_builds_on_a_persons_commit_and_answers_in_the_review_thread(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic, tmp_path: Path) -> None:
    task = open_pr(forge_settings, db, forge, model)
    assert task.branch and task.pr_number
    theirs = person_pushes(forge, task.branch, tmp_path, "NOTES.md", "Pat was here.\n")
    forge.add_review(REPO, task.pr_number, author="pat", state="CHANGES_REQUESTED", body="Needs sub().",
                     comments=({"path": "calc.py", "line": 3, "body": "Put sub() below add()."},))
    [line_comment] = forge.pull_feedback(REPO, task.pr_number).comments
    followup_id = start_followup(db, task, instructions="Put sub() below add().", comment_id=line_comment.id)

    def edit(request: Any) -> Any:
        text = first_message_text(request)
        assert "+Pat was here." in text and "`calc.py` line 3, pat: Put sub() below add()." in text
        assert "pat (changes requested): Needs sub()." in text
        return tool_use("edit_file", {"path": "calc.py", "old_text": "return a + b", "new_text": SUB})

    model.add(edit, tool_use("finish", {"summary": "Added sub()."}))
    outcome = run_task(forge_settings, db, forge, task.id)
    assert outcome.state == "pr_open", outcome.reason
    assert branch_head(forge, task.branch, "^") == theirs  # on top of the person's commit
    [pull] = forge.pull_requests(REPO)
    [reply] = [c for c in pull["review_comments"] if c.get("in_reply_to") == line_comment.id]
    assert reply["author"] == forge_settings.bot_name and reply["body"].startswith("@local pushed ")
    assert "`calc.py`" in reply["body"] and "NOTES.md" not in reply["body"]  # only what it changed
    with db.session() as session:
        row = session.get(Followup, followup_id)
        assert row is not None and row.state == "done"
        assert [run.kind for run in session.get(Task, task.id).runs] == ["attempt", "followup"]  # type: ignore[union-attr]


def test_a_person_pushing_during_the_run_gets_the_change_on_top_of_their_commit(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic, tmp_path: Path) -> None:
    task = open_pr(forge_settings, db, forge, model)
    assert task.branch and task.pr_number
    followup_id = start_followup(db, task, instructions="add sub()")
    pushed: list[str] = []

    def edit_while_pat_pushes(request: Any) -> Any:
        pushed.append(person_pushes(forge, task.branch or "", tmp_path, "PAT.md", "mine\n"))
        return tool_use("edit_file", {"path": "calc.py", "old_text": "return a + b", "new_text": SUB})

    model.add(edit_while_pat_pushes, tool_use("finish", {"summary": "Added sub()."}))
    outcome = run_task(forge_settings, db, forge, task.id)
    assert outcome.state == "pr_open", outcome.reason
    assert "merged onto" in outcome.reason
    head = branch_head(forge, task.branch)
    assert branch_head(forge, task.branch, "^") == pushed[0]  # Pat's commit kept, ours on top of it
    shown = subprocess.run(["git", "--git-dir", str(forge.bare_path(REPO)), "show", f"{head}:calc.py"],
                           capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run(["git", "--git-dir", str(forge.bare_path(REPO)), "show", f"{head}:PAT.md"],
                            capture_output=True, text=True, check=True).stdout
    assert "def sub(a, b)" in shown and theirs == "mine\n"
    [pull] = forge.pull_requests(REPO)
    [said] = [c["body"] for c in pull["comments"]]
    assert said.startswith(f"@local pushed {head[:12]}") and "the tests ran before that" in said
    with db.session() as session:
        row = session.get(Followup, followup_id)
        assert row is not None and row.state == "done"


def test_a_person_pushing_a_conflicting_change_during_the_run_is_never_overwritten(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic, tmp_path: Path) -> None:
    task = open_pr(forge_settings, db, forge, model)
    assert task.branch and task.pr_number
    followup_id = start_followup(db, task, instructions="add sub()")
    pushed: list[str] = []

    def edit_while_pat_pushes(request: Any) -> Any:
        conflicting = 'def add(a, b):\n    """Sum of a and b."""\n    return b + a\n'
        pushed.append(person_pushes(forge, task.branch or "", tmp_path, "calc.py", conflicting))
        return tool_use("edit_file", {"path": "calc.py", "old_text": "return a + b", "new_text": SUB})

    model.add(edit_while_pat_pushes, tool_use("finish", {"summary": "Added sub()."}))
    outcome = run_task(forge_settings, db, forge, task.id)
    assert outcome.state == "failed" and "moved while the follow-up ran" in outcome.reason
    assert "conflict in `calc.py`" in outcome.reason
    assert branch_head(forge, task.branch) == pushed[0]  # Pat's commit is the branch's head, untouched
    with db.session() as session:
        row = session.get(Followup, followup_id)
        assert row is not None and row.state == "failed" and "nothing of theirs was overwritten" in (row.reply or "")
    [pull] = forge.pull_requests(REPO)
    [said] = [c["body"] for c in pull["comments"]]
    assert said.startswith("@local this follow-up did not work") and "moved while the follow-up ran" in said


def test_a_ci_fix_for_a_commit_the_branch_moved_past_does_not_run(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic, tmp_path: Path) -> None:
    task = open_pr(forge_settings, db, forge, model)
    assert task.branch and task.pr_number
    failed_at = branch_head(forge, task.branch)
    theirs = person_pushes(forge, task.branch, tmp_path, "NOTES.md", "Pat fixed CI by hand.\n")
    with db.session() as session:
        row = Followup(task_id=task.id, delivery_id="d-ci", kind="ci", author="github-actions[bot]",
                       instructions="tests failed", head_sha=failed_at, state="running")
        session.add(row)
        transition(session, session.get(Task, task.id), TaskState.QUEUED, actor="test", detail="ci fix")
        session.flush()
        followup_id = row.id
    requests_before = len(model.message_requests)

    assert run_task(forge_settings, db, forge, task.id).state == "pr_open"
    assert len(model.message_requests) == requests_before  # no model call, no tokens spent
    assert branch_head(forge, task.branch) == theirs  # nothing pushed
    with db.session() as session:
        done = session.get(Followup, followup_id)
        assert done is not None and done.state == "done"
        assert f"failed were of {failed_at[:12]}" in (done.reply or "") and theirs[:12] in (done.reply or "")
    said = [c["body"] for c in forge._pull(REPO, task.pr_number).get("comments", [])]
    assert not any("did not work" in body or "pushed" in body for body in said), said  # a quiet skip
