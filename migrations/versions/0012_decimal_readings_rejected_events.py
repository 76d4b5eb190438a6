"""decimal readings, rejected events

Readings arrive whole or decimal (boards report 0.1 W, 0.01 kWh and 0.1 V; OCPP meter values
are decimals) and are kept at their resolution: energy counters and signal become double
precision (`FLOAT` on SQLite, `double precision` on PostgreSQL). Money stays integer fen.
Events a pile sent that could not be applied are kept, with the reason, in `rejected_events`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0012'
down_revision: str | Sequence[str] | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table → columns that become double precision
READINGS = {
    "charges": ("energy_wh", "last_energy_wh"),
    "meter_samples": ("energy_wh",),
    "piles": ("signal_dbm",),
}


def _retype(to: type[sa.types.TypeEngine], frm: type[sa.types.TypeEngine]) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, columns in READINGS.items():
        if sqlite:
            # SQLite cannot ALTER a column's type; batch mode copies the table. Its partial
            # unique index (one open charge per port) is reflected with its WHERE and recreated.
            with op.batch_alter_table(table, recreate="always") as batch:
                for column in columns:
                    batch.alter_column(column, type_=to(), existing_type=frm())
        else:
            for column in columns:
                op.alter_column(table, column, type_=to(), existing_type=frm(),
                                postgresql_using=f"{column}::{to().compile(op.get_bind().dialect)}")


def upgrade() -> None:
    _retype(sa.Float, sa.Integer)
    op.create_table(
        'rejected_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pile_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=81), nullable=True),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('field', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column('raw', sa.Text(), nullable=False),
        sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('rejected_events', schema=None) as batch_op:
        batch_op.create_index('ix_rejected_events_pile_id', ['pile_id'], unique=False)
        batch_op.create_index('ix_rejected_events_received', ['received_at'], unique=False)
        batch_op.create_index('uq_rejected_events_pile_digest', ['pile_id', 'digest'],
                              unique=True)


def downgrade() -> None:
    op.drop_table('rejected_events')
    _retype(sa.Integer, sa.Float)
