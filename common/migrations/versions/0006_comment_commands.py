"""comment_commands: `/forgecrew` comment commands, recorded with their delivery and carried out after it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa

from common.models import UTCDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'comment_commands',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.String(length=100), nullable=False),
        sa.Column('repo', sa.String(length=200), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('comment_id', sa.BigInteger(), nullable=False),
        sa.Column('author', sa.String(length=100), nullable=False),
        sa.Column('name', sa.String(length=40), nullable=False),
        sa.Column('argument', sa.Text(), nullable=False),
        sa.Column('installation_id', sa.BigInteger(), nullable=True),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('reply', sa.Text(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('finished_at', UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_comment_commands')),
        sa.UniqueConstraint('delivery_id', name=op.f('uq_comment_commands_delivery_id')),
    )
    op.create_index(op.f('ix_comment_commands_state'), 'comment_commands', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_comment_commands_state'), table_name='comment_commands')
    op.drop_table('comment_commands')
