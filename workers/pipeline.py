"""One run of a task: workspace → agent → tests (with repair rounds) → pull request."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from celery.exceptions import SoftTimeLimitExceeded

from common.db import Database, db_now
from common.errors import ForgecrewError, LeaseLost, TaskCancelled
from common.forge.base import Forge, ForgeError, IssueComment, IssueInfo, PullRequestInfo
from common.leases import Claim, cancellation, load_fenced, release, renew
from common.redact import Redactor
from common.settings import Settings
from common.specialties import SpecialtyProfile, StatusLabel, profiles
from common.states import TaskState
from common.transitions import record_note, transition
from workers.agent import Agent, AgentResult
from workers.budget import Budget
from workers import followup as followups
from workers import overlap, plans
from workers import workflow as wf
from workers.issue_notes import IssueNotes
from workers.progress_comment import MARKER as PROGRESS_MARKER
from workers.progress_comment import ProgressComment
from workers.llm import LLMClient, Usage
from workers.prompts import plan_message, repair_message, system_prompt, task_message, workflow_section
from workers.publish import NothingToPublish, Published, PublishRequest, publish, tests_failing_advice
from workers.repo_config import RepoConfig, instruction_files, load_repo_config
from workers.requests_inbox import RequestInbox
from workers.runs import finish_run, start_run
from workers.sandbox import Limits, Sandbox, SandboxPaths, limits_for, make_sandbox
from workers.sandbox.factory import UNSANDBOXED_WARNING
from workers.testrun import TestResult, detect_test_command, run_tests
from workers.tools.shell import CommandPolicy
from workers.tools.toolbox import Toolbox
from workers.transcript import Transcript
from workers.watchdog import SoftLimitReached
from workers.workspace import CloneFailed, Workspace, WorkspaceManager, branch_name

log = logging.getLogger(__name__)
# A run's outcome when someone cancelled its task mid-run (the task itself is already cancelled).
CANCELLED = TaskState.CANCELLED.value


class RunFailed(ForgecrewError):
    """A known way for a run to fail; the message is what a person reads on the issue."""


@dataclass(frozen=True)
class TaskSnapshot:
    id: int
    repo: str
    issue_number: int | None
    title: str
    body: str
    specialty: str
    branch: str | None
    attempt: int
    progress_comment_id: int | None = None
    plan: plans.PlanState = plans.PlanState()


@dataclass
class Outcome:
    state: str
    reason: str = ""
    pr: PullRequestInfo | None = None


class Pipeline:
    """Every step's writes are fenced by the claim: a worker that lost its lease writes nothing."""

    def __init__(self, settings: Settings, db: Database, forge_factory: Callable[[], Forge], *,
                 llm_factory: Callable[[], LLMClient], progress: Callable[[str], None] = log.info) -> None:
        self.settings = settings
        self.db = db
        self.forge_factory = forge_factory  # built inside the run, so a bad setting fails the task cleanly
        self.llm_factory = llm_factory
        self.workspaces = WorkspaceManager(settings.workspace_root, pool_size=settings.workspace_pool_size)
        self.redact = Redactor.from_settings(settings)
        # progress reaches logs and `forgecrew run` stdout, and carries tool inputs the model wrote
        self.progress: Callable[[str], None] = lambda message: progress(self.redact(message))
        self.agent: Agent | None = None
        self.last_result: AgentResult | None = None
        self.tests: TestResult | None = None
        self.sandbox: Sandbox | None = None
        self.status: ProgressComment | None = None
        self.followup: followups.FollowupJob | None = None
        self.repo_config = RepoConfig()
        self.workflow: wf.WorkflowState | None = None  # a workflow's step (workers/workflow.py), else None

    def run(self, held: Claim, should_stop: Callable[[], str | None] = lambda: None) -> Outcome:
        task = self._snapshot(held)
        self.followup = followups.running_followup(self.db, task.id)  # queued by the coordinator for a review
        run_id = self.run_id = start_run(self.db, held, kind="followup" if self.followup else "attempt")
        self.workflow = None if self.followup else wf.load_state(self.db, task.id)
        if self.workflow is not None and self.workflow.current.state == "done":
            self.workflow = None  # every step done (a re-run of the whole task): one run as its last specialty
        self.notes = IssueNotes(None, self.redact, task.repo, task.issue_number)
        outcome = Outcome(TaskState.FAILED.value)
        try:
            with self.workspaces.hold(task.id):  # `workspaces gc` on this host leaves the directory alone
                outcome = self._work(task, held, should_stop)
        except LeaseLost as exc:
            outcome = self._stopped(task, exc)
            return outcome
        except (ForgecrewError, NothingToPublish) as exc:  # known failures, incl. settings and model
            outcome = Outcome(TaskState.FAILED.value, str(exc))
        except SoftTimeLimitExceeded as exc:  # Celery's (prefork), or workers.watchdog's naming the limit
            outcome = Outcome(TaskState.FAILED.value, str(exc) if isinstance(exc, SoftLimitReached)
                              else "the task hit its time limit for this specialty")
        except Exception as exc:
            full = self._disk_full(task, exc)
            outcome = Outcome(TaskState.FAILED.value, full or f"internal error: {type(exc).__name__}: {exc}")
            if full is None:
                raise
        finally:
            if outcome.state == TaskState.FAILED:
                self._fail(task, held, outcome.reason)
            if self.followup is not None:
                self._end_followup(task, outcome)
            finish_run(self.db, held, run_id, outcome=outcome.state, detail=self.redact(outcome.reason),
                       agent=self.agent, tests=self.tests, sandbox=self.sandbox.name if self.sandbox else None)
        return outcome

    # -- the steps ---------------------------------------------------------------------------

    def _work(self, task: TaskSnapshot, held: Claim, should_stop: Callable[[], str | None]) -> Outcome:
        if self.workflow is not None:
            wf.start_step(self.db, held, self.workflow.position, self.run_id)
        self.sandbox = make_sandbox(self.settings)
        if not self.sandbox.confined:
            self._event(held, UNSANDBOXED_WARNING)
        self.forge = self.forge_factory()
        self.notes = IssueNotes(self.forge, self.redact, task.repo, task.issue_number)
        self.notes.label(StatusLabel.WORKING)
        if task.issue_number is not None:
            self.status = ProgressComment(self.forge, self.redact, self.db, task_id=task.id, repo=task.repo,
                                          number=task.issue_number, comment_id=task.progress_comment_id,
                                          interval=self.settings.progress_edit_interval_seconds)
            # written at the agent's first step, not here: the first model request waits for no forge call
            job = self.followup
            state = self.workflow
            specialty = f"{task.specialty}, step {state.position + 1} of {len(state.steps)}" if state else task.specialty
            self.status.facts.update(state="running", specialty=specialty, attempt=task.attempt, turns=0,
                                     tests="", pr=f"#{job.pr_number}" if job else "", reason="", advice="",
                                     followup=job.id if job else None)
        issue = self._issue(task)
        branch = task.branch or branch_name(task.issue_number, issue.title, task_id=task.id)
        self._update(held, branch=branch)
        workspace = self._workspace(task, branch)
        stale = self.followup and followups.stale_ci_fix(self.followup, workspace.head_sha)
        if stale:
            return self._back_to_pr(held, workspace, stale)
        self.paths = SandboxPaths(workspace.checkout, workspace.home, workspace.tmp,
                                  objects=workspace.mirror / "objects" if workspace.mirror else None,
                                  name=task.repo.rsplit("/", 1)[-1])
        self.sandbox.prepare(self.paths)
        if self.workflow is not None:
            pushed = wf.pushed_step(workspace.mirror or workspace.checkout / ".git", workspace.base_sha,
                                    workspace.head_sha, task.id, self.workflow.position)
            if pushed is not None:  # a run killed after its push, before recording it: never run it twice
                return self._step_found(task, held, workspace, issue, *pushed)
        config = self._repo_config(workspace)
        self.profile = self._profile(task.specialty, config)
        if self._plans_first(task, issue, config):
            return self._plan(task, held, issue, workspace, config, should_stop)
        test_command = config.test_command or detect_test_command(workspace.checkout)
        if config.setup_command:
            self._fence(held)
            self._setup(config)
        result = self._agent_run(task, issue, workspace, config, test_command, should_stop)
        tests = self._test_and_repair(held, test_command, config, result, should_stop)
        should_stop()  # past a soft time limit this raises (workers.watchdog): no publish after it
        if self.followup is not None:
            return self._publish_followup(task, held, workspace, tests)
        if self.workflow is not None and not self.workflow.last:
            return self._publish_step(task, held, workspace, tests)
        return self._publish(task, held, workspace, issue, tests)

    def _issue(self, task: TaskSnapshot) -> IssueInfo:
        """The issue as it was when a trusted person started the work, with its writers' comments only.

        Title and body are the stored copy from the trigger: text anyone adds later never reaches
        the model. Comments are read fresh, and only those of people with write access are kept.
        """
        stored = IssueInfo(repo=task.repo, number=task.issue_number or 0, title=task.title, body=task.body)
        if task.issue_number is None:
            return stored
        try:
            fresh = self.forge.get_issue(task.repo, task.issue_number)
        except ForgeError as exc:
            log.info("task %s: issue comments not readable from the forge (%s)", task.id, exc)
            return stored
        # not our status, nor our plans: a plan reaches the model in a section of its own
        people = tuple(c for c in fresh.comments if not c.body.startswith((PROGRESS_MARKER, plans.MARKER)))
        trusted, left_out = self._trusted_comments(task.repo, people)
        return IssueInfo(repo=task.repo, number=task.issue_number, title=task.title, body=task.body,
                         author=fresh.author, labels=fresh.labels, comments=trusted, url=fresh.url,
                         comments_left_out=left_out)

    def _trusted_comments(self, repo: str, comments: tuple[IssueComment, ...]) -> tuple[tuple[IssueComment, ...], int]:
        """Comments by users with write access (asked once per author); the rest only counted."""
        allowed: dict[str, bool] = {}
        for author in {comment.author for comment in comments}:
            try:
                allowed[author] = self.forge.has_write_access(repo, author)
            except ForgeError as exc:
                log.info("cannot check %s's access to %s (%s); leaving their comments out", author, repo, exc)
                allowed[author] = False
        kept = tuple(comment for comment in comments if allowed[comment.author])
        return kept, len(comments) - len(kept)

    def _workspace(self, task: TaskSnapshot, branch: str) -> Workspace:
        self.progress(f"cloning {task.repo} into a workspace on {branch}")
        try:
            workspace = self.workspaces.prepare(task.id, task.repo, self.forge.clone_url(task.repo), branch,
                                                credential=self.forge.git_credential(task.repo),
                                                # a follow-up: the PR's head; a workflow: the earlier steps' commits
                                                start_from_branch=self.followup is not None or self.workflow is not None,
                                                owner=getattr(getattr(self.sandbox, "config", None), "run_as", None))
        except CloneFailed as exc:
            raise RunFailed(f"clone failed: {exc}") from None
        workspace.update_metadata(state="running", attempt=task.attempt)
        return workspace

    def _repo_config(self, workspace: Workspace) -> RepoConfig:
        try:
            config = self.repo_config = load_repo_config(workspace.checkout)  # as before the agent ran
            return config
        except ForgecrewError as exc:
            raise RunFailed(str(exc)) from None

    def _setup(self, config: RepoConfig) -> None:
        network = config.setup_network or self.profile.setup_network
        if network and not self.settings.sandbox_network:
            self.progress("setup asked for network; FORGECREW_SANDBOX_NETWORK=false keeps it offline")
        limits = self._limits(config.test_timeout, network=network)
        self.progress(f"setup: {config.setup_command}" + (" (with user-mode network)" if limits.network else ""))
        assert self.sandbox is not None
        result = run_tests(config.setup_command or "", self.sandbox, self.paths, limits)
        if not result.passed:
            raise RunFailed(f"setup command failed: {result.headline()}\n\n{result.output[-2000:]}")

    def _limits(self, wall_seconds: float, *, network: bool = False) -> Limits:
        return limits_for(self.settings, self.profile, wall_seconds=wall_seconds, network=network)

    def _agent_run(self, task: TaskSnapshot, issue: IssueInfo, workspace: Workspace, config: RepoConfig,
                   test_command: str | None, should_stop: Callable[[], str | None], *,
                   planning: bool = False) -> AgentResult:
        profile = self.profile
        budget = Budget(self.settings.max_turns, self.settings.max_output_tokens,
                        self.settings.max_wall_seconds, self.settings.max_cost_usd)
        transcript = Transcript(workspace.transcript_path, self.redact)
        # one file per task, appended by every run: this line starts this run's part of it
        transcript.record("run", run_id=self.run_id, task_id=task.id, attempt=task.attempt,
                          specialty=profile.name, branch=workspace.branch, model=self.settings.model,
                          followup=self.followup.id if self.followup else None, planning=planning)
        self.agent = Agent(
            llm=self.llm_factory(),
            toolbox=self._toolbox(profile, budget),
            budget=budget,
            transcript=transcript,
            system=system_prompt(profile, repo=task.repo, branch=workspace.branch, planning=planning),
            should_stop=should_stop,
            incoming=self._inbox(task).take,
            on_event=self._agent_event,
            redact=self.redact,
            allowed_tools=plans.planning_tools(profile.tools) if planning else profile.tools,
        )
        self.progress(f"agent ({profile.name}, model {self.settings.model}) started")
        if planning:
            message = plan_message(issue, workspace.checkout, instructions=instruction_files(workspace.checkout),
                                   extra=config.instructions, previous_plan=task.plan.plan,
                                   changes=task.plan.feedback)
        elif self.followup is not None:
            feedback, left_out = followups.trusted_feedback(self.forge, task.repo, self.followup)
            message = followups.followup_message(
                self.followup, title=issue.title, feedback=feedback, left_out=left_out, test_command=test_command,
                diff=followups.pr_diff(workspace.mirror, workspace.base_sha, workspace.head_sha))
        else:
            approved = task.plan.plan if task.plan.approved_by else None
            message = task_message(issue, workspace.checkout, instructions=instruction_files(workspace.checkout),
                                   extra=config.instructions, test_command=test_command, approved_plan=approved,
                                   workflow=self._workflow_section(workspace))
        return self._checked(self.agent.run(message))

    def _inbox(self, task: TaskSnapshot) -> RequestInbox:
        """A follow-up reads only what comes after it started; a first run or a retry reads every request."""
        return RequestInbox.from_now(self.db, task.id) if self.followup is not None else RequestInbox(self.db, task.id)

    def _checked(self, result: AgentResult) -> AgentResult:
        self.progress(f"agent ended: {result.outcome} after {result.turns} turns")
        self.last_result = result
        if result.outcome == "stopped":
            raise LeaseLost(result.summary)
        if result.outcome == "model_error":
            raise RunFailed(f"model error: {result.summary}")
        if result.outcome == "refused":
            raise RunFailed(f"model refused: {result.summary}; the issue may need rewording or a person")
        if result.outcome == "budget":
            raise RunFailed(result.summary)
        return result

    def _test_and_repair(self, held: Claim, test_command: str | None, config: RepoConfig,
                         result: AgentResult, should_stop: Callable[[], str | None]) -> TestResult | None:
        if not test_command:
            self.progress("no test command found; skipping tests")
            return None
        for round_number in range(self.settings.repair_rounds + 1):
            should_stop()  # past a soft time limit this raises (workers.watchdog)
            self._move(held, TaskState.TESTING, f"running `{test_command}`")
            self.progress(f"tests: {test_command}")
            self._status(state="testing", tests=f"running `{test_command}`")
            assert self.sandbox is not None
            self.tests = run_tests(test_command, self.sandbox, self.paths,
                                   self._limits(config.test_timeout, network=self.profile.command_network))
            self.progress(f"tests: {self.tests.headline()}")
            if self.tests.passed or round_number == self.settings.repair_rounds:
                return self.tests
            self._move(held, TaskState.RUNNING, f"repair round {round_number + 1}: {self.tests.headline()}")
            self._status(state="running", tests=f"{self.tests.headline()}; repairing")
            assert self.agent is not None
            self._checked(self.agent.run(repair_message(self.tests.headline(), self.tests.output,
                                                        round_number + 1, self.settings.repair_rounds)))
        return self.tests

    def _plans_first(self, task: TaskSnapshot, issue: IssueInfo, config: RepoConfig) -> bool:
        """Plan before changing: asked by label or .forgecrew.yml, on an issue (where it is approved), no plan yet."""
        return (self.followup is None and task.issue_number is not None
                and plans.needs_plan(task.plan, issue.labels, config))

    def _plan(self, task: TaskSnapshot, held: Claim, issue: IssueInfo, workspace: Workspace, config: RepoConfig,
              should_stop: Callable[[], str | None]) -> Outcome:
        """A read-only run whose summary is the plan: posted on the issue, kept on the task, which then waits.

        Posted before it is recorded: a task must never wait for the approval of a plan nobody can see.
        """
        assert task.issue_number is not None
        result = self._agent_run(task, issue, workspace, config, None, should_stop, planning=True)
        revision, plan = task.plan.revision + 1, self.redact(result.summary)
        workspace.mark_finished(TaskState.AWAITING_APPROVAL.value)
        self._fence(held)  # a task cancelled meanwhile posts no plan
        comment_id = plans.post_plan(self.forge, task.repo, task.issue_number,
                                     plans.plan_comment(task.id, plan, revision, feedback=task.plan.feedback))
        detail = f"plan revision {revision} posted (comment {comment_id}); waiting for `/forgecrew approve`"
        plans.record_plan(self.db, held, plan=plan, revision=revision, comment_id=comment_id, detail=detail)
        self.progress(detail)
        problems = [self.notes.label(StatusLabel.AWAITING_APPROVAL),
                    self._status(final=True, state=TaskState.AWAITING_APPROVAL.value, tests="", pr="", reason="",
                                 advice=plans.ADVICE)]
        return Outcome(TaskState.AWAITING_APPROVAL.value, detail + "".join(f"; {p}" for p in problems if p))

    def _publish(self, task: TaskSnapshot, held: Claim, workspace: Workspace, issue: IssueInfo,
                 tests: TestResult | None) -> Outcome:
        agent = self.agent  # None only for a workflow's last step found already pushed (_step_found)
        self.progress("publishing: commit, push, pull request")
        request = PublishRequest(task.repo, task.issue_number, issue.title, self.last_result.summary if self.last_result else "", tests,
                                 agent.usage if agent else Usage(), agent.cost if agent else None,
                                 (agent.model_used if agent else "") or self.settings.model,
                                 **self._workflow_request(task, tests))
        try:
            published = publish(self.forge, self.settings, workspace, request, self.redact,
                                fence=lambda: self._fence(held), before_push=lambda files: self._overlaps(held, files))
        except overlap.OverlapSerialized as exc:
            return self._wait_for_overlap(held, workspace, exc.overlap)
        workspace.mark_finished("pr_open")
        detail = self.redact(_pr_detail(published, request, workspace.branch, published.problems))
        with self.db.session() as session:  # recorded first: the issue never announces a PR the task lacks
            row = load_fenced(session, held)
            row.pr_url, row.pr_number, row.summary = published.pr.url, published.pr.number, self.redact(request.summary)
            if self.workflow is not None:  # the last step is done in the transaction that records the PR
                wf.complete(session, row, self.workflow.position, self._last_step_result(request, workspace), self.run_id)
            transition(session, row, TaskState.PR_OPEN, actor=held.owner, detail=detail[:1000])
            release(row)
        announce_problems = self._announce(published, request, workspace.branch)
        if announce_problems:  # best-effort once the PR exists; the run's record says what went wrong
            detail = self.redact(detail + "".join(f"; {problem}" for problem in announce_problems))
        self.progress(f"pull request: {published.pr.url}")
        if request.tests_fail and tests:
            self.progress(tests_failing_advice(tests, workspace.branch))
        return Outcome(TaskState.PR_OPEN.value, detail, pr=published.pr)

    # -- workflow steps (workers/workflow.py) ----------------------------------------------------

    def _workflow_section(self, workspace: Workspace) -> str:
        state = self.workflow
        if state is None:
            return ""
        previous = [(s.specialty, s.summary, s.commit_sha, s.files) for s in state.previous]
        log_text = wf.branch_log(workspace.mirror or workspace.checkout / ".git", workspace.base_sha,
                                 workspace.head_sha)
        return workflow_section(position=state.position, specialties=[s.specialty for s in state.steps],
                                previous=previous, log=log_text)

    def _step_result(self, summary: str, workspace: Workspace, tests: TestResult | None, *,
                     commit: str | None = None, files: tuple[str, ...] = ()) -> wf.StepResult:
        agent = self.agent
        return wf.StepResult(self.redact(summary), commit, files, tests,
                             agent.usage if agent else Usage(), agent.cost if agent else None)

    def _last_step_result(self, request: PublishRequest, workspace: Workspace) -> wf.StepResult:
        """The last step as its PR shows it: its own commit (if it made one) and the files that commit changed."""
        pushed = workspace.remote_branch_sha
        commit = pushed if pushed and pushed != workspace.head_sha else None
        files = wf.changed_files(workspace.publish_dir, workspace.head_sha, commit) if commit else ()
        return self._step_result(request.summary, workspace, request.tests, commit=commit, files=files)

    def _workflow_request(self, task: TaskSnapshot, tests: TestResult | None) -> dict[str, object]:
        """The last step's PR: every step in the body (this one as it ends now), and its commit trailer."""
        state = self.workflow
        if state is None:
            return {}
        agent = self.agent
        mine = replace(state.current, state="done", summary=self.last_result.summary if self.last_result else "",
                       tests=tests.headline() if tests else "no tests found",
                       tests_passed=tests.passed if tests else None,
                       input_tokens=agent.usage.input_tokens if agent else 0,
                       output_tokens=agent.usage.output_tokens if agent else 0, cost_usd=agent.cost if agent else None)
        return {"steps": (*state.previous, mine, *state.steps[state.position + 1:]),
                "commit_trailer": wf.trailer(task.id, state.position)}

    def _publish_step(self, task: TaskSnapshot, held: Claim, workspace: Workspace,
                      tests: TestResult | None) -> Outcome:
        """An intermediate step: its commit pushed to the branch (no PR), done, and the task queued for the next."""
        state = self.workflow
        assert state is not None
        if tests is not None and not tests.passed:
            raise RunFailed(f"its tests still fail after {self.settings.repair_rounds} repair round(s): "
                            f"{tests.headline()}; nothing of this step was pushed")
        summary = self.redact(self.last_result.summary if self.last_result else "")
        self.progress(f"{state.name()}: commit and push to {workspace.branch}")
        message = wf.step_message(task.title, task.issue_number, state.current.specialty, summary, task.id,
                                  state.position)
        commit, files = wf.push_step(self.forge, self.settings, workspace, message, self.redact,
                                     fence=lambda: self._fence(held))
        return self._step_done(held, workspace, self._step_result(summary, workspace, tests, commit=commit,
                                                                  files=files))

    def _step_found(self, task: TaskSnapshot, held: Claim, workspace: Workspace, issue: IssueInfo, commit: str,
                    summary: str) -> Outcome:
        """This step's commit is already on the branch (its run was killed after pushing): record it, run nothing."""
        state = self.workflow
        assert state is not None
        self._event(held, f"{state.name()}: its commit {commit[:12]} is already on {workspace.branch}; "
                          "recorded as done without running it again")
        git_dir = workspace.mirror or workspace.checkout / ".git"
        files = wf.changed_files(git_dir, f"{commit}^", commit)
        if not state.last:
            return self._step_done(held, workspace, self._step_result(summary, workspace, None, commit=commit,
                                                                      files=files))
        self.last_result = AgentResult("submitted", summary, Usage(), None, 0)  # the PR's summary: the pushed step's
        return self._publish(task, held, workspace, issue, None)

    def _step_done(self, held: Claim, workspace: Workspace, result: wf.StepResult) -> Outcome:
        state = self.workflow
        assert state is not None
        workspace.mark_finished("queued")
        detail = self.redact(wf.advance(self.db, held, state, result, self.run_id))
        self.progress(detail)
        self._status(final=True, state="queued", reason="", pr="", tests=result.tests.headline()
                     if result.tests else "no tests found",
                     advice=f"{detail[0].upper()}{detail[1:]}. The pull request opens after the last step.")
        return Outcome(TaskState.QUEUED.value, detail)

    def _overlaps(self, held: Claim, files: list[str]) -> list[str]:
        """Record the branch's files; the PR body's lines on other PRs changing them (workers/overlap.py)."""
        with self.db.session() as session:
            found = overlap.record_and_find(session, load_fenced(session, held), files)
        if found and self.repo_config.serialize_overlapping:
            raise overlap.OverlapSerialized(found[0])
        return overlap.pr_section(found)

    def _wait_for_overlap(self, held: Claim, workspace: Workspace, other: overlap.Overlap) -> Outcome:
        """Push nothing and wait (serialize_overlapping): once the other PR ends, a fresh run starts from the new
        default branch; this run's unpushed work is discarded with its workspace."""
        reason = other.wait_reason()
        workspace.mark_finished("waiting")
        with self.db.session() as session:
            row = load_fenced(session, held)
            row.wait_reason, row.waiting_since = reason, db_now(session)
            # this run ended as it should: the fresh run after the wait is not a retry of a lost worker,
            # so it gets MAX_ATTEMPTS of its own (as each workflow step does)
            row.attempt = 0
            transition(session, row, TaskState.WAITING, actor=held.owner, detail=f"waiting: {reason}"[:1000])
            release(row)
        self.progress(f"waiting: {reason}")
        self._status(final=True, state=TaskState.WAITING.value, reason=reason, tests="", pr="", advice="")
        return Outcome(TaskState.WAITING.value, reason)

    def _publish_followup(self, task: TaskSnapshot, held: Claim, workspace: Workspace,
                          tests: TestResult | None) -> Outcome:
        """A new commit on the same branch and PR (workers/followup.py); the task goes back to pr_open."""
        job = self.followup
        assert job is not None and self.agent is not None
        summary = self.last_result.summary if self.last_result else ""
        self.progress(f"follow-up {job.id}: commit and push to {workspace.branch}")
        result = followups.publish_followup(self.forge, self.settings, workspace, job, repo=task.repo,
                                            summary=self.redact(summary), tests=tests, redact=self.redact,
                                            fence=lambda: self._fence(held))
        workspace.mark_finished("pr_open")
        pushed = f"pushed {result.commit[:12]}" if result.commit else "changed nothing"
        detail = self.redact(f"follow-up {job.id} {pushed} on pull request #{job.pr_number}"
                             + "".join(f"; {problem}" for problem in result.problems))
        with self.db.session() as session:
            row = load_fenced(session, held)
            transition(session, row, TaskState.PR_OPEN, actor=held.owner, detail=detail[:1000])
            release(row)
        reply = self.redact(followups.reply_text(job, result, summary, tests))
        problems = followups.post_reply(self.forge, task.repo, job, reply)
        self._status(final=True, state="pr_open", pr=f"#{job.pr_number} ({pushed} by follow-up {job.id})",
                     tests=tests.headline() if tests else "no tests found", advice="")
        return Outcome(TaskState.PR_OPEN.value, detail + "".join(f"; {p}" for p in problems))

    def _back_to_pr(self, held: Claim, workspace: Workspace, reason: str) -> Outcome:
        """End a follow-up that has nothing to do without touching the branch; the PR takes the next one."""
        self.progress(reason)
        workspace.mark_finished("pr_open")
        with self.db.session() as session:
            row = load_fenced(session, held)
            transition(session, row, TaskState.PR_OPEN, actor=held.owner, detail=reason[:1000])
            release(row)
        return Outcome(TaskState.PR_OPEN.value, reason)

    def _end_followup(self, task: TaskSnapshot, outcome: Outcome) -> None:
        """The follow-up's own record; a failed one is said on the PR, whose task can take the next one."""
        job = self.followup
        assert job is not None
        if outcome.state == TaskState.PR_OPEN:
            followups.finish_followup(self.db, job.id, state="done", reply=outcome.reason)
            return
        if outcome.state == "lease_lost":
            return  # the run goes on elsewhere: the new holder finishes the follow-up
        followups.finish_followup(self.db, job.id, state="failed", reply=outcome.reason)
        forge = getattr(self, "forge", None)
        if forge is not None:
            to = "" if job.kind == "ci" else f"@{job.author} "  # a CI fix answers the PR, not the checks' bot
            followups.post_reply(forge, task.repo, job, self.redact(
                f"{to}this follow-up did not work: {outcome.reason[:1500]}"))

    def _announce(self, published: Published, request: PublishRequest, branch: str) -> list[str]:
        """Label the issue and write the progress comment's last state; what failed goes into the detail."""
        pr = published.pr
        advice = tests_failing_advice(request.tests, branch) if request.tests_fail and request.tests else ""
        written = self._status(final=True, state="pr_open", pr=f"{pr.url} ({'opened' if pr.created else 'updated'})",
                               tests=request.tests.headline() if request.tests else "no tests found", advice=advice)
        return [problem for problem in (self.notes.label(StatusLabel.PR_OPEN), written) if problem]

    def _agent_event(self, message: str) -> None:
        self.progress(message)
        if self.agent is not None:
            self._status(state="running", turns=self.agent.budget.turns)

    def _status(self, *, final: bool = False, **facts: object) -> str | None:
        """The progress comment, with the run's tokens and cost so far; None without an issue."""
        if self.status is None:
            return None
        if self.agent is not None:
            facts.update(usage=self.agent.usage, cost=self.agent.cost)
        return self.status.update(final=final, **facts)

    # -- helpers -----------------------------------------------------------------------------

    def _profile(self, specialty: str, config: RepoConfig) -> SpecialtyProfile:
        known = profiles(self.settings)
        if self.workflow is not None:  # each step is its own specialty's, whatever .forgecrew.yml prefers
            return known.get(specialty) or known["general"]
        return known.get(config.specialty or "") or known.get(specialty) or known["general"]

    def _toolbox(self, profile: SpecialtyProfile, budget: Budget) -> Toolbox:
        """Tools under the specialty's command policy and limits, never outlasting the run's budget."""
        policy = CommandPolicy(allowed=profile.allowed_commands,
                               denied=CommandPolicy().denied + profile.denied_commands)
        assert self.sandbox is not None
        return Toolbox(self.paths.checkout, sandbox=self.sandbox, paths=self.paths,
                       limits=self._limits(profile.command_timeout_seconds, network=profile.command_network),
                       policy=policy, command_timeout=profile.command_timeout_seconds, time_left=budget.time_left)

    def _snapshot(self, held: Claim) -> TaskSnapshot:
        with self.db.session() as session:
            row = load_fenced(session, held)
            return TaskSnapshot(row.id, row.repo, row.issue_number, row.title, row.body, row.specialty,
                                row.branch, row.attempt, row.progress_comment_id,
                                plans.PlanState(row.plan, row.plan_revision or 0, row.plan_feedback,
                                                row.plan_approved_by))

    def _fence(self, held: Claim) -> None:
        """Raise LeaseLost unless this worker still holds the task (and push its lease forward)."""
        renew(self.db, held)

    def _update(self, held: Claim, **fields: object) -> None:
        with self.db.session() as session:
            row = load_fenced(session, held)
            for key, value in fields.items():
                setattr(row, key, value)

    def _event(self, held: Claim, detail: str) -> None:
        """A note in the audit log that changes no state (e.g. that this run is unsandboxed)."""
        with self.db.session() as session:
            record_note(session, load_fenced(session, held), actor=held.owner, detail=detail[:1000])

    def _move(self, held: Claim, to_state: TaskState, detail: str) -> None:
        with self.db.session() as session:
            transition(session, load_fenced(session, held), to_state, actor=held.owner, detail=detail)

    def _stopped(self, task: TaskSnapshot, exc: LeaseLost) -> Outcome:
        """The run lost its task: cancelled (the workspace is kept for inspection) or taken over."""
        if not isinstance(exc, TaskCancelled):
            with self.db.session() as session:
                exc = cancellation(session, task.id) or exc
        if not isinstance(exc, TaskCancelled):
            log.warning("task %s: %s; leaving it to the new holder", task.id, exc)
            return Outcome("lease_lost", str(exc))
        self.progress(f"stopped: {exc}")
        if (self.workspaces.task_dir(task.id) / "metadata.json").exists():
            # from now on `workspaces gc` counts the retention, so the directory stays to be looked at
            self.workspaces.load(task.id).mark_finished("cancelled")
        self._status(final=True, state="cancelled", reason=str(exc), advice="")
        return Outcome(CANCELLED, str(exc))

    def _disk_full(self, task: TaskSnapshot, exc: BaseException) -> str | None:
        """The reason for a run that ran out of disk, its checkout removed so other tasks go on; else None."""
        if not _out_of_space(exc):
            return None
        log.warning("task %s: the workspace disk is full (%s); removing its workspace", task.id, exc)
        try:
            self.workspaces.remove(task.id)
            freed = "its workspace was removed to free the disk"
        except OSError as error:
            freed = f"its workspace could not be removed ({error})"
        return (f"the workspace disk is full (No space left on device under FORGECREW_WORKSPACE_ROOT="
                f"{self.settings.workspace_root}); {freed}. Free space or give the workers a larger disk, then "
                "retry; if the change itself writes large files, say so on the issue")

    def _fail(self, task: TaskSnapshot, held: Claim, reason: str) -> None:
        reason = self.redact(reason)
        if self.workflow is not None:  # the workflow stops here; earlier steps' commits stay on the branch
            reason = f"{self.workflow.name()} failed: {reason}"
        self.progress(f"failed: {reason}")
        try:
            with self.db.session() as session:
                row = load_fenced(session, held)
                if self.workflow is not None:
                    wf.fail_step(session, task.id, self.workflow.position, reason)
                row.failure_reason = reason[:4000]
                transition(session, row, TaskState.FAILED, actor=held.owner, detail=reason[:1000])
                release(row)
        except LeaseLost:
            return
        workspace_dir = self.workspaces.task_dir(task.id)
        try:
            if (workspace_dir / "metadata.json").exists():
                self.workspaces.load(task.id).mark_finished("failed")
        except OSError as exc:  # bookkeeping only: the issue must still hear why
            log.warning("task %s: could not mark its workspace failed: %s", task.id, exc)
        self.notes.label(StatusLabel.FAILED)
        advice = "Fix the cause, then comment `/forgecrew retry` or add the `forgecrew` label again."
        if self.status is not None:
            self._status(final=True, state="failed", reason=reason, advice=advice)
        else:
            self.notes.comment(f"forgecrew could not finish this issue.\n\n> {reason[:1500]}\n\n{advice}")


def _out_of_space(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain, or in the words of a git that ran out of it."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _pr_detail(published: Published, request: PublishRequest, branch: str, problems: list[str]) -> str:
    """The pr_open event's detail: the PR, the test verdict and what to do, and any step that failed."""
    pr = published.pr
    if request.tests is None:
        verdict = "no tests"
    elif request.tests.passed:
        verdict = "tests pass"
    else:
        verdict = (f"draft, tests fail: {request.tests.headline()}; push a fix to {branch} "
                   "or add the `forgecrew` label to the issue again")
    text = f"{'opened' if pr.created else 'updated'} {pr.url} ({verdict})"
    return text + "".join(f"; {problem}" for problem in problems)
