"""The state database: tasks, their audit log, and the webhook deliveries seen."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from common.states import ACTIVE_STATES

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use common.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# The predicate of the partial unique index on active tasks; ON CONFLICT must name it to infer the index.
ACTIVE_TASK_SQL = "state IN (" + ", ".join(f"'{s.value}'" for s in sorted(ACTIVE_STATES)) + ")"


class Task(Base):
    """One unit of agent work on one issue (or an ad-hoc request) in one repository."""

    __tablename__ = "tasks"
    __table_args__ = (
        # one issue has at most one task in flight: the database, not hope, enforces it
        Index(
            "uq_tasks_active_issue",
            "repo",
            "issue_number",
            unique=True,
            postgresql_where=text(ACTIVE_TASK_SQL),
            sqlite_where=text(ACTIVE_TASK_SQL),
        ),
        Index("ix_tasks_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo: Mapped[str] = mapped_column(String(200), index=True)
    issue_number: Mapped[int | None] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    specialty: Mapped[str] = mapped_column(String(40), index=True)
    triage_reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(20), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(100), default="")
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    branch: Mapped[str | None] = mapped_column(String(255))
    pr_url: Mapped[str | None] = mapped_column(String(500))
    pr_number: Mapped[int | None] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # sends so far; the n-th send's Celery message id is celery_app.message_id(id, n)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    # the one comment on the issue that says how the task goes, edited in place across its runs
    progress_comment_id: Mapped[int | None] = mapped_column(BigInteger)
    # plans before code (workers/plans.py): the latest plan, its comment and number, what a person asked
    # to change in it (read by the next planning run), and who approved it (None: not approved yet)
    plan: Mapped[str | None] = mapped_column(Text)
    plan_comment_id: Mapped[int | None] = mapped_column(BigInteger)
    plan_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    plan_feedback: Mapped[str | None] = mapped_column(Text)
    plan_approved_by: Mapped[str | None] = mapped_column(String(100))
    # scheduling (coordinator/admission.py): -1 low, 0 normal, 1 high, from the priority labels;
    # why a `waiting` task waits and since when
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    wait_reason: Mapped[str | None] = mapped_column(Text)
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # what an LLM triage decided (triage_reason says it in words), and what that call cost
    triage_confidence: Mapped[float | None] = mapped_column(Float)
    triage_cost_usd: Mapped[float | None] = mapped_column(Float)
    # the files the task's branch changes (JSON list), for overlap with other tasks in the repository
    changed_files: Mapped[str | None] = mapped_column(Text)
    # a workflow (several specialties on one branch): the position of the step that runs now; None: one step
    workflow_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    events: Mapped[list[TaskEvent]] = relationship(
        back_populates="task", order_by="TaskEvent.id", cascade="all, delete-orphan"
    )
    runs: Mapped[list[TaskRun]] = relationship(
        back_populates="task", order_by="TaskRun.id", cascade="all, delete-orphan"
    )
    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="task", order_by="WorkflowStep.position", cascade="all, delete-orphan"
    )


class TaskEvent(Base):
    """One state transition of a task: the audit log (who, when, from, to, why)."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    task: Mapped[Task] = relationship(back_populates="events")


class TaskRun(Base):
    """One run of the agent on a task (an attempt or a follow-up): its own tokens and outcome."""

    __tablename__ = "task_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20), default="attempt")
    worker: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    test_command: Mapped[str | None] = mapped_column(Text)
    tests_passed: Mapped[bool | None] = mapped_column(Boolean)
    transcript_path: Mapped[str | None] = mapped_column(Text)
    sandbox: Mapped[str | None] = mapped_column(String(40))  # what ran its commands: bubblewrap, none
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    task: Mapped[Task] = relationship(back_populates="runs")


class WorkflowStep(Base):
    """One specialty's step of a multi-specialty task: all steps share the task's branch and PR.

    The record the canvas resumes from: a step `done` never runs again, a worker killed in a
    `running` step leaves it to run again, a `failed` one stops the workflow until a retry.
    """

    __tablename__ = "workflow_steps"
    __table_args__ = (UniqueConstraint("task_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 0, 1, ...: the order the steps run in
    specialty: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending, running, done, failed
    summary: Mapped[str | None] = mapped_column(Text)
    commit_sha: Mapped[str | None] = mapped_column(String(64))  # the branch head this step pushed
    files: Mapped[str | None] = mapped_column(Text)  # JSON list of the paths this step changed
    tests: Mapped[str | None] = mapped_column(Text)  # one line: the step's test result
    tests_passed: Mapped[bool | None] = mapped_column(Boolean)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    run_id: Mapped[int | None] = mapped_column(Integer)  # the task_runs row of its latest run
    detail: Mapped[str | None] = mapped_column(Text)  # why it failed
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    task: Mapped[Task] = relationship(back_populates="steps")


class TaskDependency(Base):
    """"depends on #N" in an issue's body: the task waits until #N's forgecrew PR merges or #N closes."""

    __tablename__ = "task_dependencies"
    __table_args__ = (UniqueConstraint("task_id", "blocker_issue"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    blocker_issue: Mapped[int] = mapped_column(Integer)  # an issue number in the task's repository
    state: Mapped[str] = mapped_column(String(20), default="waiting")  # waiting, cleared
    cleared_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """Every GitHub delivery received, kept so redeliveries are recognised and outcomes audited."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(100), unique=True)
    event: Mapped[str] = mapped_column(String(100))
    action: Mapped[str | None] = mapped_column(String(100))
    repo: Mapped[str | None] = mapped_column(String(200))
    sender: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(Text, default="received")
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # the parsed JSON body, so `forgecrew webhook replay` can run it through intake again
    payload: Mapped[str | None] = mapped_column(Text)


class CommentCommand(Base):
    """A `/forgecrew …` or `@forgecrew …` comment: recorded with its delivery, carried out after the commit.

    `state` is pending until the coordinator has checked the author's access and acted; a
    coordinator that dies in between leaves it pending, and the reconciler carries it out.
    """

    __tablename__ = "comment_commands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(100), unique=True)
    repo: Mapped[str] = mapped_column(String(200))
    number: Mapped[int] = mapped_column(Integer)  # the issue's or pull request's number
    comment_id: Mapped[int] = mapped_column(BigInteger)
    author: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(40))  # retry, cancel, route, status, help, request
    argument: Mapped[str] = mapped_column(Text, default="")
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)  # pending, done, refused
    reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Followup(Base):
    """A review, review comment or PR comment that asks for more work on a task's open pull request.

    Recorded with its delivery as `received`; the coordinator then checks the author's access
    (`pending`, or `refused`), starts follow-ups of one task one at a time in id order
    (`running`), and the worker that ran it ends it `done` or `failed`.
    """

    __tablename__ = "followups"
    # a check suite, its runs and a commit status all report one failing commit: one CI fix for it
    __table_args__ = (UniqueConstraint("task_id", "head_sha"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    delivery_id: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # review, comment, ci
    author: Mapped[str] = mapped_column(String(100))
    instructions: Mapped[str] = mapped_column(Text, default="")
    review_id: Mapped[int | None] = mapped_column(BigInteger)
    comment_id: Mapped[int | None] = mapped_column(BigInteger)  # the review comment to answer in its thread
    head_sha: Mapped[str | None] = mapped_column(String(64))  # a ci follow-up's failing commit; None otherwise
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(20), default="received", index=True)
    reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
