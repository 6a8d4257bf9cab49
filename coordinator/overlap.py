"""Placeholder hold check; replaced by its owner (see coordinator/admission.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.models import Task
from common.settings import Settings


def hold_reason(session: Session, task: Task, settings: Settings) -> str | None:
    return None
