"""followups: reviews and PR comments that ask for more work on a task's pull request

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa

from common.models import UTCDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'followups',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.String(length=100), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('author', sa.String(length=100), nullable=False),
        sa.Column('instructions', sa.Text(), nullable=False),
        sa.Column('review_id', sa.BigInteger(), nullable=True),
        sa.Column('comment_id', sa.BigInteger(), nullable=True),
        sa.Column('installation_id', sa.BigInteger(), nullable=True),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('reply', sa.Text(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('finished_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_followups_task_id_tasks'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_followups')),
        sa.UniqueConstraint('delivery_id', name=op.f('uq_followups_delivery_id')),
    )
    op.create_index(op.f('ix_followups_state'), 'followups', ['state'], unique=False)
    op.create_index(op.f('ix_followups_task_id'), 'followups', ['task_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_followups_task_id'), table_name='followups')
    op.drop_index(op.f('ix_followups_state'), table_name='followups')
    op.drop_table('followups')
