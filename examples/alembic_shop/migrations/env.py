from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData, engine_from_config, pool

import alembic_pgflow  # pgflow

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# pgflow: the database is DATABASE_URL when set (else sqlalchemy.url), on psycopg 3.
alembic_pgflow.configure_database_url(config)

# pgflow: the flows autogenerate manages: module names ("myapp.flows"), "module:Class"
# references, Flow/Job classes or FlowDefinition objects. Call it once or several times.
alembic_pgflow.include_flows("shop.flows")

# Your models' MetaData (e.g. Base.metadata); an empty MetaData() if you have none.
target_metadata = MetaData()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        # pgflow: new revisions go on *your* head and into *your* directory, and those
        # with flow operations depend on the pgflow schema branch.
        process_revision_directives=alembic_pgflow.process_revision_directives,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            process_revision_directives=alembic_pgflow.process_revision_directives,  # pgflow
            # pgflow, only if you compare several schemas: keep autogenerate away from pgflow's.
            # include_schemas=True, include_name=alembic_pgflow.include_name,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
