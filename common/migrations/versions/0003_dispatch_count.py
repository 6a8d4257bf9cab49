"""dispatch count: each send of a task has a deterministic Celery message id

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Rows that were sent before this revision count 0 sends, so their (random) message ids are
never found in the broker: the reconciler resends each of them once, when it is old enough.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatch_count', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('dispatch_count')
