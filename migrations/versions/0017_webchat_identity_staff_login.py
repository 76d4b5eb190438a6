"""web-chat identity issued by the server, staff login

Web-chat identities are issued by the server in a signed cookie; `webchat_clients` counts them
per client address an hour. Staff act in the web chat only through a session (`web_sessions`,
token kept hashed) opened by a one-time login link (`web_login_links`) or a password
(`staff_passwords`, argon2id); wrong passwords are rows of `login_failures`, counted per
account and per address.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0017'
down_revision: str | Sequence[str] | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'webchat_clients',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webchat_clients_address', 'webchat_clients', ['address', 'created_at'],
                    unique=False)
    op.create_table(
        'web_login_links',
        sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('rider_id', sa.Integer(), nullable=False),
        sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['rider_id'], ['riders.id']),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    op.create_index('ix_web_login_links_rider_id', 'web_login_links', ['rider_id'],
                    unique=False)
    op.create_table(
        'web_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('rider_id', sa.Integer(), nullable=False),
        sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('via', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('ended_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['rider_id'], ['riders.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_web_sessions_rider_id', 'web_sessions', ['rider_id'], unique=False)
    op.create_index('ix_web_sessions_token', 'web_sessions', ['token_hash'], unique=True)
    op.create_table(
        'staff_passwords',
        sa.Column('rider_id', sa.Integer(), nullable=False),
        sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column('set_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['rider_id'], ['riders.id']),
        sa.PrimaryKeyConstraint('rider_id'),
    )
    op.create_table(
        'login_failures',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('account', sqlmodel.sql.sqltypes.AutoString(length=160), nullable=False),
        sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_login_failures_account', 'login_failures', ['account', 'at'],
                    unique=False)
    op.create_index('ix_login_failures_address', 'login_failures', ['address', 'at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_login_failures_address', table_name='login_failures')
    op.drop_index('ix_login_failures_account', table_name='login_failures')
    op.drop_table('login_failures')
    op.drop_table('staff_passwords')
    op.drop_index('ix_web_sessions_token', table_name='web_sessions')
    op.drop_index('ix_web_sessions_rider_id', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_index('ix_web_login_links_rider_id', table_name='web_login_links')
    op.drop_table('web_login_links')
    op.drop_index('ix_webchat_clients_address', table_name='webchat_clients')
    op.drop_table('webchat_clients')
