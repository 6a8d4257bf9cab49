"""Placeholder: multi-specialty workflows (owned by the workflow part of issue 13)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from common.models import Task
from common.settings import Settings


def create_steps(session: Session, task: Task, specialties: Sequence[str], settings: Settings) -> None:
    """Make `task` a workflow of these specialties (ordered by settings), in the caller's transaction."""
    raise NotImplementedError("workflows are not built yet")
