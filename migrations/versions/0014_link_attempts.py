"""link attempts, collapsed emergency pages

Every code typed into /link is a row in `link_attempts`: failed tries are counted from it (per
identity and across everyone, per hour), so the limits hold across workers and restarts, and a
valid code becomes a request its owner confirms or refuses (`state`). `tickets.page_of` marks an
emergency that joined another's page instead of paging staff again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0014'
down_revision: str | Sequence[str] | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'link_attempts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('external_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('rider_id', sa.Integer(), nullable=False),
        sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=True),
        sa.Column('owner_id', sa.Integer(), nullable=True),
        sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column('decided_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['owner_id'], ['riders.id']),
        sa.ForeignKeyConstraint(['rider_id'], ['riders.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_link_attempts_identity', 'link_attempts',
                    ['platform', 'external_id', 'at'], unique=False)
    op.create_index('ix_link_attempts_ok_at', 'link_attempts', ['ok', 'at'], unique=False)
    op.add_column('tickets', sa.Column('page_of', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tickets') as batch:
        batch.drop_column('page_of')
    op.drop_index('ix_link_attempts_ok_at', table_name='link_attempts')
    op.drop_index('ix_link_attempts_identity', table_name='link_attempts')
    op.drop_table('link_attempts')
