"""The PostgreSQL adapter: every SQL statement notiflow runs lives in this package."""

from notiflow.store.migrate import apply_migrations
from notiflow.store.pool import connect_pool, pg_errors

__all__ = ["apply_migrations", "connect_pool", "pg_errors"]
