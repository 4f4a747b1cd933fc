"""Alembic environment of the example shop: its tables (none here) and its pgflow flows."""

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

import alembic_pgflow

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)

# The flows autogenerate manages. Changing a flow's shape stops autogenerate with an
# explanation; allow_data_loss=[...] or drop_removed=[...] here opt in to deleting runs.
alembic_pgflow.include_flows("shop.flows")

# Your models' MetaData (e.g. Base.metadata); autogenerate compares tables as usual.
target_metadata = sa.MetaData()


def database_url() -> sa.URL:
    url = os.environ.get("DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set DATABASE_URL, e.g. postgresql://postgres@127.0.0.1:5432/shop")
    return sa.make_url(url).set(drivername="postgresql+psycopg")


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        process_revision_directives=alembic_pgflow.process_revision_directives,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # Bases new revisions on your own head and makes those with flow operations
            # depend on the pgflow schema branch, so `alembic upgrade heads` installs it first.
            process_revision_directives=alembic_pgflow.process_revision_directives,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
