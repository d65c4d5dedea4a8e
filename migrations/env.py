"""Alembic environment: the URL comes from the caller or from xtaldiff's settings."""

from logging.config import fileConfig

from alembic import context

from xtaldiff.db import get_engine
from xtaldiff.settings import get_settings
from xtaldiff.tables import Base

config = context.config
if config.config_file_name and not config.attributes.get("database_url"):
    # Only the alembic CLI configures logging; programmatic callers keep their own.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.attributes.get("database_url") or get_settings().resolved_database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    with get_engine(url).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
