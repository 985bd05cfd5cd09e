"""Alembic's environment for the scheduler's database.

The database is the one the scheduler's settings name (``DATABASE_URL``, else the SQLite file of
``SCHEDULING_DB``), or the connection handed over by ``scheduling.database.migrate`` when the
service migrates at start. ``tables.Base.metadata`` is the target of ``alembic revision
--autogenerate``."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine

from scheduling.settings import SchedulingSettings
from scheduling.tables import Base

config = context.config
target_metadata = Base.metadata
if config.config_file_name and "connection" not in config.attributes:  # the command line: its logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or SchedulingSettings().sqlalchemy_url()
    if url is None:
        raise SystemExit("no database configured: set DATABASE_URL or SCHEDULING_DB")
    return url


def run_offline() -> None:
    """Write the SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # scheduling.database.migrate: its connection, its transaction
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
