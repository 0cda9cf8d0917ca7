"""Alembic environment: migrations run on the connection handed over by ``store.migrate``."""

from alembic import context
from sqlalchemy import create_engine

from sslmri_core.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # `alembic -x url=...` from a shell, for developers writing a new revision
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///runs.db")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
