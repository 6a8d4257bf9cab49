"""Response and request bodies of the REST API, so /openapi.json describes every field."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from common.states import TaskState

# Limits of what PostgreSQL stores, stated in the schema so a request past them is a 422, not a 500.
MAX_ID = 2**31 - 1  # task ids and issue numbers are PostgreSQL integers
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL (0x00)


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong and what to do about it.")


class TaskSummary(BaseModel):
    """One task as `forgecrew tasks list --json` prints it."""

    id: int
    repo: str = Field(description="owner/name")
    issue_number: int | None = Field(description="None for work submitted without an issue.")
    title: str
    specialty: str = Field(description="The queue it is routed to.")
    state: str = Field(description="One of " + ", ".join(state.value for state in TaskState) + ".")
    attempt: int = Field(description="Runs claimed so far.")
    branch: str | None
    pr_url: str | None
    triage_reason: str
    triage_confidence: float | None = Field(None, description="LLM triage's confidence (0..1), when a model "
                                            "was asked; None for labels and rules alone.")
    triage_cost_usd: float | None = Field(None, description="What LLM triage's model call cost, when known.")
    failure_reason: str | None
    lease_owner: str | None = Field(description="The worker running it, while it runs.")
    priority: int = Field(0, description="-1 low, 0 normal, 1 high (the forgecrew:priority-* labels).")
    wait_reason: str | None = Field(None, description="Why a waiting task waits (a limit, the daily quota, a "
                                    "dependency, an overlapping task); None otherwise.")
    created_at: datetime | None
    updated_at: datetime | None


class TaskEventOut(BaseModel):
    """One line of the audit log."""

    from_state: str | None = Field(description="None on the event that created the task.")
    to_state: str
    actor: str = Field(description="Who moved it: a webhook delivery, a worker, the reconciler, api.")
    detail: str
    at: datetime | None


class TaskRunOut(BaseModel):
    """One run of the agent on the task (an attempt or a follow-up)."""

    attempt: int
    kind: str
    worker: str
    model: str | None
    outcome: str | None = Field(description="None while the run is going on.")
    detail: str | None
    turns: int
    tests_passed: bool | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float | None
    transcript: str | None = Field(description="Path of the transcript on the worker host.")
    sandbox: str | None = Field(description="What ran its commands: bubblewrap, or none (unconfined).")
    started_at: datetime | None
    finished_at: datetime | None


class Usage(BaseModel):
    """Tokens and cost over every run of the task."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float | None = Field(description="None when no run used a priced model.")


class WorkflowStepOut(BaseModel):
    """One specialty's step of a multi-specialty task (one branch, one PR)."""

    position: int = Field(description="0, 1, ...: the order the steps run in.")
    specialty: str
    state: str = Field(description="pending, running, done or failed.")
    summary: str | None
    commit_sha: str | None = Field(description="The commit this step pushed to the task's branch.")
    files: list[str] = Field(description="The paths this step changed.")
    tests: str | None
    tests_passed: bool | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    run_id: int | None = Field(description="The run (task_runs) that ran it last.")
    detail: str | None = Field(description="Why it failed.")
    started_at: datetime | None
    finished_at: datetime | None


class TaskDetail(TaskSummary):
    """A task with its body, events (the audit log), runs, usage and (a workflow) its steps."""

    body: str
    summary: str | None = Field(description="The agent's summary of its change.")
    events: list[TaskEventOut]
    runs: list[TaskRunOut]
    usage: Usage
    workflow_step: int | None = Field(None, description="A workflow's current step; None for a one-step task.")
    steps: list[WorkflowStepOut] = Field(default_factory=list, description="A workflow's steps, in order.")


class TaskPage(BaseModel):
    """One page of tasks, newest first."""

    items: list[TaskSummary]
    total: int = Field(description="Tasks matching the filters, over all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Pass as offset for the next page; None on the last.")


class SubmitRequest(BaseModel):
    """Work started without a webhook: an existing issue, or a title and body of its own (one is needed)."""

    repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/name")
    issue: int | None = Field(None, gt=0, le=MAX_ID, description="Issue number; its title and body are used.")
    title: str | None = Field(None, min_length=1, max_length=500, pattern=NO_NUL,
                              description="Without an issue: what to do.")
    body: str = Field("", max_length=65536, pattern=NO_NUL)
    specialty: str | None = Field(None, pattern=NO_NUL, description="Skip triage and use this queue.")
    requested_by: str = Field("api", min_length=1, max_length=100, pattern=NO_NUL,
                              description="Recorded in the audit log as who asked.")


class CancelRequest(BaseModel):
    reason: str = Field("", max_length=1000, pattern=NO_NUL, description="Recorded in the audit log.")


class ActiveTask(BaseModel):
    """A task a worker is executing right now."""

    task_id: int | None = Field(description="The forgecrew task id (None for a message not of forgecrew's).")
    message_id: str = Field(description="Celery's task id of the message.")
    started_at: datetime | None


class Agent(BaseModel):
    """One Celery worker node (one `forgecrew worker` process and its pool)."""

    hostname: str
    online: bool = Field(description="Heartbeating now (or answered the inspect broadcast).")
    last_heartbeat: datetime | None = Field(description="When its last event reached the coordinator.")
    queues: list[str] | None = Field(description="Queues it consumes; None when it did not answer inspect.")
    active: list[ActiveTask] | None = Field(description="What it runs; None when it did not answer inspect.")
    active_count: int = Field(description="Tasks executing, per inspect or else its last heartbeat.")
    processed: int = Field(description="Tasks it has received since it started, per its last heartbeat.")
    loadavg: list[float]
    version: str = Field(description="Celery version it runs.")


class AgentList(BaseModel):
    agents: list[Agent]
    online: int = Field(description="How many are online.")
    inspected: bool = Field(description="Whether the inspect broadcast was sent (inspect=false skips it).")
