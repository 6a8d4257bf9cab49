"""Per-run records (task_runs) and the task's running totals of tokens and cost."""

from __future__ import annotations

from common.db import Database
from common.leases import Claim
from common.models import Task, TaskRun, utcnow
from workers.agent import Agent
from workers.testrun import TestResult

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def start_run(db: Database, held: Claim, *, kind: str = "attempt") -> int:
    """`kind`: attempt (the issue's work) or followup (a review's), each with its own tokens and transcript part."""
    with db.session() as session:
        run = TaskRun(task_id=held.task_id, attempt=held.attempt, worker=held.owner, kind=kind)
        session.add(run)
        session.flush()
        return run.id


def finish_run(db: Database, held: Claim, run_id: int, *, outcome: str, detail: str, agent: Agent | None,
               tests: TestResult | None, sandbox: str | None = None) -> None:
    """Write what this run did, whatever its outcome, and add its usage to the task's totals."""
    with db.session() as session:
        run = session.get(TaskRun, run_id)
        run.finished_at, run.outcome, run.detail = utcnow(), outcome, detail[:4000]
        run.sandbox = sandbox
        if tests:
            run.test_command, run.tests_passed = tests.command, tests.passed
        if agent is None:
            return
        run.model, run.turns, run.cost_usd = agent.model_used or None, agent.budget.turns, agent.cost
        run.transcript_path = str(agent.transcript.path)
        task = session.get(Task, held.task_id)
        for field in USAGE_FIELDS:
            spent = getattr(agent.usage, field)
            setattr(run, field, spent)
            setattr(task, field, (getattr(task, field) or 0) + spent)
        if agent.cost is not None:
            task.cost_usd = (task.cost_usd or 0.0) + agent.cost
