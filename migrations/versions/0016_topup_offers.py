"""top-up offers

The nonce on a top-up card's buttons is issued and kept by the server (`topup_offers`) and used
once: a client that makes up nonces gets nothing, and two presses of one card pay once.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0016'
down_revision: str | Sequence[str] | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'topup_offers',
        sa.Column('nonce', sa.String(length=16), nullable=False),
        sa.Column('rider_id', sa.Integer(), nullable=False),
        sa.Column('issued_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('amount_fen', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['rider_id'], ['riders.id']),
        sa.PrimaryKeyConstraint('nonce'),
    )
    op.create_index('ix_topup_offers_rider_id', 'topup_offers', ['rider_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_topup_offers_rider_id', table_name='topup_offers')
    op.drop_table('topup_offers')
