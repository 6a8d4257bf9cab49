""""depends on #N" / "blocked by #N" in an issue's body: its task waits until #N's forgecrew PR merges or #N closes.

At intake (coordinator/webhooks/issues.py) the body is parsed and each blocker becomes a
TaskDependency row; a task with an uncleared one goes straight to `waiting` in the intake
transaction and is never handed to the Sender. A row clears when #N's forgecrew task is `done` (its
PR merged), when #N closes (the `issues.closed` webhook, coordinator/webhooks/lifecycle.py), or,
for a webhook that never came, when the reconciler's DependencyChecks asks the forge. A dependency
that would close a cycle (#1 → #2 → #1) is refused: that task fails with the cycle as its reason,
and DependencyChecks says so on the issue.

Only this repository's issues count ("#3" or "owner/repo#3"); text in code blocks, inline code and
quotes is not read (a quoted "depends on #3" is someone else's words), and an issue naming itself
is ignored.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.forge.base import Forge, ForgeError
from common.models import Task, TaskDependency
from common.settings import Settings
from common.states import ACTIVE_STATES, TaskState
from common.transitions import transition

log = logging.getLogger(__name__)
ACTOR = "dependencies"
WAITING, CLEARED = "waiting", "cleared"
MAX_BODY = 65_536  # GitHub's own limit on an issue body; anything past it is not read
MAX_BLOCKERS = 20  # dependencies one issue may declare; more is a paste, not a plan
MAX_ISSUE = 2**31 - 1  # task_dependencies.blocker_issue is a 32-bit integer
# the failure_reason of a task refused for a cycle; DependencyChecks finds these to comment on them
CYCLE_PREFIX = "refused: its dependencies form a cycle "
CYCLE_ADVICE = ("Remove one of the \"depends on\" lines from an issue of the cycle, then add the `forgecrew` "
                "label to this issue again.")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)[^`]*?\1")
# "depends on #3", "Depends-on: #3, #4 and acme/calc#5", "blocked by #7"; [0-9], not \d: no other scripts' digits
_GAP = r"(?:[ \t]+|[ \t]*-[ \t]*)"  # "depends on", "Depends-on"; not "dependson"
_PHRASE = re.compile(rf"\b(?:depends{_GAP}on|blocked{_GAP}by)\b[ \t]*:?[ \t]*", re.IGNORECASE)
_REF = re.compile(r"(?:(?P<repo>[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}))?#(?P<number>[0-9]{1,10})\b")
_SEPARATOR = re.compile(r"[ \t]*(?:,|;|&|\band\b|\bor\b)?[ \t]*", re.IGNORECASE)


class DependencyCycle(Exception):
    """Starting this task would close a cycle of dependencies; `cycle` lists it, first issue repeated last."""

    def __init__(self, cycle: Sequence[int]) -> None:
        self.cycle = tuple(cycle)
        super().__init__(CYCLE_PREFIX + describe_cycle(cycle))


def describe_cycle(cycle: Sequence[int]) -> str:
    return " → ".join(f"#{number}" for number in cycle)


def parse_blockers(body: str | None, *, repo: str, issue_number: int | None) -> list[int]:
    """The issue numbers `body` says this issue depends on, in order of mention, without duplicates."""
    body = (body or "")[:MAX_BODY]
    if not _may_name_blockers(body):  # most bodies: intake's hot path pays no more
        return []
    found: list[int] = []
    for line in _prose_lines(body):
        for phrase in _PHRASE.finditer(line):
            for number in _refs_after(line, phrase.end(), repo):
                if number != issue_number and number not in found and 0 < number <= MAX_ISSUE:
                    found.append(number)
                    if len(found) >= MAX_BLOCKERS:
                        return found
    return found


def _may_name_blockers(body: str | None) -> bool:
    lowered = (body or "")[:MAX_BODY].lower()
    return "depends" in lowered or "blocked" in lowered


def _prose_lines(body: str) -> Iterable[str]:
    """The body's lines outside fenced code and quotes, with inline code and HTML comments blanked."""
    fence: str | None = None
    for line in _without_comments(body).splitlines():
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        if line.lstrip().startswith(">") or line.startswith(("    ", "\t")):  # a quote, or an indented code block
            continue
        yield _INLINE_CODE.sub(" ", line)


def _without_comments(body: str) -> str:
    """HTML comments (hidden when rendered) blanked, in one pass: an unclosed one is left as text."""
    parts, position = [], 0
    while (start := body.find("<!--", position)) != -1:
        end = body.find("-->", start + 4)
        if end == -1:
            break
        parts += [body[position:start], " " + "\n" * body.count("\n", start, end)]
        position = end + 3
    return "".join(parts) + body[position:]


def _refs_after(line: str, position: int, repo: str) -> Iterable[int]:
    """The references listed right after a phrase: "#3, #4 and owner/repo#5"; another repository's are skipped."""
    while True:
        ref = _REF.match(line, position)
        if ref is None:
            return
        named = ref.group("repo")
        if named is None or named.lower() == repo.lower():
            yield int(ref.group("number"))
        position = _SEPARATOR.match(line, ref.end()).end()  # type: ignore[union-attr]  (matches the empty string)


# -- intake ------------------------------------------------------------------------------------

def record(session: Session, task: Task, blockers: Sequence[int]) -> None:
    """One waiting TaskDependency row per blocker of `task` (a blocker already recorded is left alone)."""
    known = set(session.scalars(select(TaskDependency.blocker_issue).where(TaskDependency.task_id == task.id)))
    now = db_now(session)
    for number in blockers:
        if number not in known:
            session.add(TaskDependency(task_id=task.id, blocker_issue=number, state=WAITING, created_at=now))
    session.flush()


def find_cycle(session: Session, repo: str, issue_number: int, blockers: Sequence[int]) -> list[int] | None:
    """The cycle `issue_number` → blockers would close, as issue numbers (first repeated last), or None.

    The graph is the repository's open dependencies: waiting rows of its tasks, and what the bodies of
    its active tasks say (a blocker still being triaged has no rows of its own yet).
    """
    edges: dict[int, set[int]] = {issue_number: set(blockers)}
    rows = session.execute(
        select(Task.issue_number, TaskDependency.blocker_issue).join(Task, Task.id == TaskDependency.task_id)
        .where(func.lower(Task.repo) == repo.lower(), TaskDependency.state == WAITING,
               Task.state.in_([s.value for s in (*ACTIVE_STATES, TaskState.PR_OPEN)]))).all()
    for number, blocker in rows:
        if number is not None and number != issue_number:
            edges.setdefault(number, set()).add(blocker)
    for number, body in session.execute(
            select(Task.issue_number, Task.body).where(func.lower(Task.repo) == repo.lower(),
                                                       Task.issue_number.is_not(None),
                                                       Task.issue_number != issue_number,
                                                       Task.state.in_([s.value for s in ACTIVE_STATES]))).all():
        edges.setdefault(number, set()).update(parse_blockers(body, repo=repo, issue_number=number))
    return _path_back(edges, issue_number)


def _path_back(edges: dict[int, set[int]], start: int) -> list[int] | None:
    """A path start → … → start through `edges` (iterative depth-first search), or None."""
    stack: list[tuple[int, list[int]]] = [(blocker, [start, blocker]) for blocker in sorted(edges.get(start, ()),
                                                                                            reverse=True)]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node == start:
            return path
        if node in seen:
            continue
        seen.add(node)
        stack.extend((nxt, [*path, nxt]) for nxt in sorted(edges.get(node, ()), reverse=True)
                     if nxt == start or nxt not in seen)
    return None


def admit_new(session: Session, task_id: int, body: str, settings: Settings, *, repo: str,
              issue_number: int | None, actor: str) -> str | None:
    """At intake, in its transaction: record the new task's dependencies; why it must not be sent now, or None.

    A body naming no blocker costs no statement (intake's hot path). A task with an uncleared dependency
    is moved to waiting; one closing a cycle fails (DependencyCycle's words are its reason): a person
    fixes that by editing a body, so nothing retries it by itself.
    """
    blockers = parse_blockers(body, repo=repo, issue_number=issue_number)
    if not blockers:
        return None
    task = session.get(Task, task_id)
    if task is None:
        return None
    from coordinator import admission  # it imports this module for its checks

    cycle = find_cycle(session, task.repo, task.issue_number, blockers) if task.issue_number is not None else None
    record(session, task, blockers)  # a refused task keeps them too: `/forgecrew retry` must not skip its blockers
    if cycle is not None:
        reason = str(DependencyCycle(cycle))
        task.failure_reason = reason
        transition(session, task, TaskState.FAILED, actor=actor, detail=reason)
        return reason
    reason = hold_reason(session, task, settings)
    if reason is not None:
        admission.hold(session, task, reason, actor=actor)
    return reason


# -- the hold check ----------------------------------------------------------------------------

def hold_reason(session: Session, task: Task, settings: Settings) -> str | None:
    """Why `task` still waits for its blockers, or None; clears rows whose blocker's task is done (DB only)."""
    if not _may_name_blockers(task.body):  # rows come only from the stored body: no query for most sends
        return None
    rows = session.scalars(select(TaskDependency).where(TaskDependency.task_id == task.id,
                                                        TaskDependency.state == WAITING)
                           .order_by(TaskDependency.blocker_issue)).all()
    if not rows:
        return None
    latest = _latest_tasks(session, task.repo, [row.blocker_issue for row in rows])
    open_ones: list[str] = []
    for row in rows:
        blocker = latest.get(row.blocker_issue)
        if blocker is not None and blocker.state == TaskState.DONE:
            _clear(session, [row], f"#{row.blocker_issue}'s forgecrew PR #{blocker.pr_number} was merged")
            continue
        open_ones.append(f"#{row.blocker_issue} ({_blocker_words(blocker)})")
    return "blocked by " + ", ".join(open_ones) if open_ones else None


def _latest_tasks(session: Session, repo: str, numbers: Sequence[int]) -> dict[int, Task]:
    """Each issue's newest task in `repo`."""
    found: dict[int, Task] = {}
    for task in session.scalars(select(Task).where(Task.repo == repo, Task.issue_number.in_(numbers))
                                .order_by(Task.id)):
        found[task.issue_number] = task  # type: ignore[index]  (in_ excludes None)
    return found


def _blocker_words(blocker: Task | None) -> str:
    if blocker is None:
        return "open, no forgecrew task yet"
    if blocker.state == TaskState.PR_OPEN:
        return "its forgecrew PR is not merged yet"
    if blocker.state in (TaskState.FAILED, TaskState.CANCELLED):
        return f"its forgecrew task {blocker.id} {blocker.state}; waiting until the issue closes"
    return f"its forgecrew task {blocker.id} is {blocker.state}"


# -- clearing ----------------------------------------------------------------------------------

def clear_blocker(session: Session, repo: str, blocker_issue: int, reason: str) -> list[int]:
    """Clear every waiting dependency on `blocker_issue` in `repo` (it merged or closed); the dependent tasks' ids."""
    rows = session.scalars(
        select(TaskDependency).join(Task, Task.id == TaskDependency.task_id)
        .where(func.lower(Task.repo) == repo.lower(), TaskDependency.blocker_issue == blocker_issue,
               TaskDependency.state == WAITING).with_for_update(of=TaskDependency)).all()
    _clear(session, rows, reason)
    return sorted({row.task_id for row in rows})


def _clear(session: Session, rows: Sequence[TaskDependency], reason: str) -> None:
    if not rows:
        return
    now = db_now(session)
    for row in rows:
        row.state, row.cleared_reason, row.cleared_at = CLEARED, reason[:1000], now
    session.flush()


# -- the reconciler's sweep --------------------------------------------------------------------

class DependencyChecks:
    """Asks the forge about blockers still open after a while (a missed `issues.closed` or merge webhook would
    hold the dependent for ever; the local forge sends none), and says on the issue what a task waits for or
    that it was refused for a cycle.

    A blocker is asked about at the first round that sees it (an issue may name one closed long ago), then
    at most once per FORGECREW_DEPENDENCY_CHECK_SECONDS; at most PER_SWEEP blockers are asked about per round.
    """

    PER_SWEEP = 10

    def __init__(self, db: Database, forge_for: Callable[[int | None], Forge], release: Callable[..., object],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.db, self.forge_for, self.release, self.clock = db, forge_for, release, clock
        self._asked: dict[tuple[str, int], float] = {}  # (repo, blocker) -> when this process last asked

    def sweep(self) -> None:
        self.announce_cycles()
        self.announce_waiting()
        for repo in self.check_blockers():
            self.release(repo=repo)

    def check_blockers(self) -> list[str]:
        """Clear the rows of blockers the forge reports closed; the repositories whose tasks may go on."""
        interval = self.db.settings.dependency_check_seconds
        with self.db.session() as session:
            candidates = session.execute(
                select(Task.repo, TaskDependency.blocker_issue, func.min(Task.installation_id))
                .join(Task, Task.id == TaskDependency.task_id)
                .where(TaskDependency.state == WAITING, Task.state == TaskState.WAITING.value)
                .group_by(Task.repo, TaskDependency.blocker_issue)
                .order_by(Task.repo, TaskDependency.blocker_issue).limit(500)).all()
        now, released, asked = self.clock(), set(), 0
        for repo, number, installation_id in candidates:
            last = self._asked.get((repo, number))
            if (last is not None and now - last < interval) or asked >= self.PER_SWEEP:
                continue
            self._asked[(repo, number)], asked = now, asked + 1
            try:
                why = self._cleared_on_forge(self.forge_for(installation_id), repo, number)
            except ForgeError as exc:  # the next round past the interval asks again
                log.info("cannot read blocker %s#%s (%s); its dependents keep waiting", repo, number, exc)
                continue
            if why is not None:
                with self.db.session() as session:
                    if clear_blocker(session, repo, number, why):
                        released.add(repo)
        return sorted(released)

    def _cleared_on_forge(self, forge: Forge, repo: str, number: int) -> str | None:
        """Why blocker #number no longer blocks, as the forge has it (its forgecrew PR merged, or it closed); None."""
        with self.db.session() as session:
            pr_number = session.scalar(select(Task.pr_number).where(
                Task.repo == repo, Task.issue_number == number, Task.state == TaskState.PR_OPEN.value,
                Task.pr_number.is_not(None)).order_by(Task.id.desc()).limit(1))
        if pr_number is not None and forge.pull_state(repo, pr_number) == "merged":
            return f"#{number}'s forgecrew PR #{pr_number} was merged (seen on the forge)"
        if forge.get_issue(repo, number).state == "closed":
            return f"#{number} is closed (seen on the forge)"
        return None

    def announce_cycles(self) -> list[int]:
        """Comment once on each issue whose task was refused for a cycle; the tasks commented on."""
        with self.db.session() as session:
            found = session.scalars(select(Task.id).where(
                Task.state == TaskState.FAILED.value, Task.issue_number.is_not(None),
                Task.progress_comment_id.is_(None), Task.failure_reason.startswith(CYCLE_PREFIX))
                .order_by(Task.id).limit(self.PER_SWEEP)).all()
        return [task_id for task_id in found if self._announce(task_id)]

    def announce_waiting(self) -> list[int]:
        """Post the progress comment of each task held by its dependencies, once: the issue says what it waits for.

        The worker that runs the task later edits this same comment (tasks.progress_comment_id).
        """
        with self.db.session() as session:
            found = session.scalars(select(Task.id).where(
                Task.state == TaskState.WAITING.value, Task.issue_number.is_not(None),
                Task.progress_comment_id.is_(None), Task.wait_reason.startswith("blocked by "))
                .order_by(Task.id).limit(self.PER_SWEEP)).all()
        return [task_id for task_id in found if self._announce(task_id)]

    def _announce(self, task_id: int) -> bool:
        from workers.progress_comment import render  # the comment the worker goes on editing

        with self.db.session() as session:
            task = session.scalars(select(Task).where(Task.id == task_id).with_for_update(skip_locked=True)).first()
            if task is None or task.progress_comment_id is not None or task.issue_number is None:
                return False
            if task.state == TaskState.WAITING:
                body = render(task.id, {"state": "waiting", "specialty": task.specialty, "reason": task.wait_reason,
                                        "advice": "It starts by itself, from the default branch as it is then."})
            else:
                cycle = (task.failure_reason or "")[len(CYCLE_PREFIX):]
                body = (f"forgecrew did not start this issue: its dependencies form a cycle, {cycle}, so none of "
                        f"them could ever start.\n\n{CYCLE_ADVICE}")
            try:
                comment_id = self.forge_for(task.installation_id).comment(task.repo, task.issue_number, body)
            except ForgeError as exc:
                log.warning("task %s: could not say on %s#%s why it does not start (%s)", task.id, task.repo,
                            task.issue_number, exc)
                return False
            session.execute(update(Task).where(Task.id == task.id).values(progress_comment_id=comment_id)
                            .execution_options(synchronize_session=False))
        return True
