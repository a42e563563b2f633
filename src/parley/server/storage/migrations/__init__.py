"""Alembic migrations; run at server start by ``storage.db.migrate``."""
