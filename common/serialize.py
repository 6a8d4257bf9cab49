"""Plain-dict views of tasks, shared by the CLI's --json and the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import json

from common.models import Task, TaskEvent, TaskRun, WorkflowStep
from common.transcript_calls import tool_calls_by_run


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def task_summary(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "repo": task.repo,
        "issue_number": task.issue_number,
        "title": task.title,
        "specialty": task.specialty,
        "state": task.state,
        "attempt": task.attempt,
        "branch": task.branch,
        "pr_url": task.pr_url,
        "triage_reason": task.triage_reason,
        "triage_confidence": task.triage_confidence,
        "triage_cost_usd": task.triage_cost_usd,
        "failure_reason": task.failure_reason,
        "lease_owner": task.lease_owner,
        "priority": task.priority,
        "wait_reason": task.wait_reason,
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
    }


def event_dict(event: TaskEvent) -> dict[str, Any]:
    return {
        "from_state": event.from_state,
        "to_state": event.to_state,
        "actor": event.actor,
        "detail": event.detail,
        "at": _iso(event.at),
    }


def run_dict(run: TaskRun, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One run; `tool_calls` come from its transcript (common.transcript_calls), empty when not at hand."""
    return {
        "id": run.id, "test_command": run.test_command, "tool_calls": tool_calls or [],
        "attempt": run.attempt, "kind": run.kind, "worker": run.worker, "model": run.model,
        "outcome": run.outcome, "detail": run.detail, "turns": run.turns, "tests_passed": run.tests_passed,
        "input_tokens": run.input_tokens, "output_tokens": run.output_tokens,
        "cache_read_tokens": run.cache_read_tokens, "cache_write_tokens": run.cache_write_tokens,
        "cost_usd": run.cost_usd, "transcript": run.transcript_path, "sandbox": run.sandbox,
        "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
    }


def step_dict(step: WorkflowStep) -> dict[str, Any]:
    """One step of a workflow (coordinator/workflow.py): its specialty, state and what it did."""
    return {
        "position": step.position, "specialty": step.specialty, "state": step.state, "summary": step.summary,
        "commit_sha": step.commit_sha, "files": json.loads(step.files or "[]"), "tests": step.tests,
        "tests_passed": step.tests_passed, "input_tokens": step.input_tokens, "output_tokens": step.output_tokens,
        "cost_usd": step.cost_usd, "run_id": step.run_id, "detail": step.detail,
        "started_at": _iso(step.started_at), "finished_at": _iso(step.finished_at),
    }


def task_detail(task: Task) -> dict[str, Any]:
    data = task_summary(task)
    data["workflow_step"] = task.workflow_step  # None: one step
    data["steps"] = [step_dict(step) for step in task.steps]
    data["body"] = task.body
    data["summary"] = task.summary
    data["events"] = [event_dict(event) for event in task.events]
    # every run of a task appends to one transcript; a run still going has no path of its own yet
    transcript = next((run.transcript_path for run in reversed(task.runs) if run.transcript_path), None)
    calls = tool_calls_by_run(transcript)
    data["runs"] = [run_dict(run, calls.get(run.id)) for run in task.runs]
    data["usage"] = {
        "input_tokens": task.input_tokens,
        "output_tokens": task.output_tokens,
        "cache_read_tokens": task.cache_read_tokens,
        "cache_write_tokens": task.cache_write_tokens,
        "cost_usd": task.cost_usd,
    }
    return data
