"""followups.head_sha: the failing commit of a ci follow-up, one CI fix per task and commit

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('followups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('head_sha', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_followups_task_id_head_sha'), ['task_id', 'head_sha'])


def downgrade() -> None:
    with op.batch_alter_table('followups', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_followups_task_id_head_sha'), type_='unique')
        batch_op.drop_column('head_sha')
