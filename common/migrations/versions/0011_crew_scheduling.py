"""A crew: workflow steps, dependencies, the waiting state, priorities, LLM triage and overlap facts

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa

from common.models import UTCDateTime

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# The partial unique index's predicate before and after (common.models.ACTIVE_TASK_SQL): a waiting
# task still holds its issue, so a second task cannot start beside it.
OLD_ACTIVE = "state IN ('awaiting_approval', 'pending', 'queued', 'running', 'testing', 'triaged')"
NEW_ACTIVE = "state IN ('awaiting_approval', 'pending', 'queued', 'running', 'testing', 'triaged', 'waiting')"


def _active_index(batch_op, predicate: str) -> None:  # type: ignore[no-untyped-def]
    batch_op.create_index('uq_tasks_active_issue', ['repo', 'issue_number'], unique=True,
                          postgresql_where=sa.text(predicate), sqlite_where=sa.text(predicate))


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('wait_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('waiting_since', UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('triage_confidence', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('triage_cost_usd', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('changed_files', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('workflow_step', sa.Integer(), nullable=True))
        batch_op.drop_index('uq_tasks_active_issue')
        _active_index(batch_op, NEW_ACTIVE)
    op.create_table(
        'workflow_steps',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('specialty', sa.String(length=40), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('summary', sa.Text(), nullable=True),
        sa.Column('commit_sha', sa.String(length=64), nullable=True),
        sa.Column('files', sa.Text(), nullable=True),
        sa.Column('tests', sa.Text(), nullable=True),
        sa.Column('tests_passed', sa.Boolean(), nullable=True),
        sa.Column('input_tokens', sa.BigInteger(), nullable=False),
        sa.Column('output_tokens', sa.BigInteger(), nullable=False),
        sa.Column('cost_usd', sa.Float(), nullable=True),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('started_at', UTCDateTime(), nullable=True),
        sa.Column('finished_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_workflow_steps_task_id_tasks'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_workflow_steps')),
        sa.UniqueConstraint('task_id', 'position', name=op.f('uq_workflow_steps_task_id_position')),
    )
    op.create_index(op.f('ix_workflow_steps_task_id'), 'workflow_steps', ['task_id'], unique=False)
    op.create_table(
        'task_dependencies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('blocker_issue', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('cleared_reason', sa.Text(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('cleared_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_dependencies_task_id_tasks'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_task_dependencies')),
        sa.UniqueConstraint('task_id', 'blocker_issue', name=op.f('uq_task_dependencies_task_id_blocker_issue')),
    )
    op.create_index(op.f('ix_task_dependencies_task_id'), 'task_dependencies', ['task_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_task_dependencies_task_id'), table_name='task_dependencies')
    op.drop_table('task_dependencies')
    op.drop_index(op.f('ix_workflow_steps_task_id'), table_name='workflow_steps')
    op.drop_table('workflow_steps')
    # the old code has no waiting state: such a task goes back to queued, and the reconciler sends it
    op.execute("UPDATE tasks SET state = 'queued' WHERE state = 'waiting'")
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('uq_tasks_active_issue')
        _active_index(batch_op, OLD_ACTIVE)
        for column in ('workflow_step', 'changed_files', 'triage_cost_usd', 'triage_confidence',
                       'waiting_since', 'wait_reason', 'priority'):
            batch_op.drop_column(column)
