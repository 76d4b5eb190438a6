"""photo uploads

Every photo taken from a rider is a row in `photo_uploads`: the daily quota per identity is
counted from it (so it holds across workers), and the clean-up job deletes the files of uploads
that no ticket, work order or review referenced within 24 hours.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0015'
down_revision: str | Sequence[str] | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'photo_uploads',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('external_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('path', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column('uploaded_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('referenced', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_photo_uploads_identity', 'photo_uploads',
                    ['platform', 'external_id', 'uploaded_at'], unique=False)
    op.create_index('ix_photo_uploads_sweep', 'photo_uploads', ['referenced', 'uploaded_at'],
                    unique=False)
    op.create_index('ix_photo_uploads_path', 'photo_uploads', ['path'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_photo_uploads_path', table_name='photo_uploads')
    op.drop_index('ix_photo_uploads_sweep', table_name='photo_uploads')
    op.drop_index('ix_photo_uploads_identity', table_name='photo_uploads')
    op.drop_table('photo_uploads')
