"""awaiting_approval: a task's plan waits for approval, and the state counts as active on its issue

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# The partial unique index's predicate before and after (common.models.ACTIVE_TASK_SQL): a task waiting
# for approval of its plan still holds its issue, so a second task cannot start beside it.
OLD_ACTIVE = "state IN ('pending', 'queued', 'running', 'testing', 'triaged')"
NEW_ACTIVE = "state IN ('awaiting_approval', 'pending', 'queued', 'running', 'testing', 'triaged')"


def _active_index(batch_op, predicate: str) -> None:  # type: ignore[no-untyped-def]
    batch_op.create_index('uq_tasks_active_issue', ['repo', 'issue_number'], unique=True,
                          postgresql_where=sa.text(predicate), sqlite_where=sa.text(predicate))


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('plan_comment_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('plan_revision', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('plan_feedback', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('plan_approved_by', sa.String(length=100), nullable=True))
        batch_op.drop_index('uq_tasks_active_issue')
        _active_index(batch_op, NEW_ACTIVE)


def downgrade() -> None:
    # a waiting task would break nothing under the old index, but it would be a state the old code lacks
    op.execute("UPDATE tasks SET state = 'cancelled' WHERE state = 'awaiting_approval'")
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('uq_tasks_active_issue')
        _active_index(batch_op, OLD_ACTIVE)
        batch_op.drop_column('plan_approved_by')
        batch_op.drop_column('plan_feedback')
        batch_op.drop_column('plan_revision')
        batch_op.drop_column('plan_comment_id')
        batch_op.drop_column('plan')
