"""pile protocols

A pile speaks our JSON events (HTTP or MQTT), AP3000 over TCP or OCPP 1.6J over a WebSocket;
`wire_id` is the id it gives itself there (an AP3000 device id, an OCPP charge point id).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0018'
down_revision: str | Sequence[str] | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('piles') as batch:
        batch.add_column(sa.Column('protocol', sqlmodel.sql.sqltypes.AutoString(length=8),
                                   nullable=False, server_default='json'))
        batch.add_column(sa.Column('wire_id', sqlmodel.sql.sqltypes.AutoString(length=40),
                                   nullable=True))
        batch.create_index('uq_piles_protocol_wire_id', ['protocol', 'wire_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('piles') as batch:
        batch.drop_index('uq_piles_protocol_wire_id')
        batch.drop_column('wire_id')
        batch.drop_column('protocol')
