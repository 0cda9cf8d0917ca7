"""The run store: every run, its metrics and results, data-set manifests and audits, in SQL.

Modules: ``schema`` (ORM tables), ``status`` (heartbeat rules, ``RunRecord``), ``engine`` (URLs,
engines, retries), ``migrate`` (Alembic), ``writer`` (``RunStore``), ``lifecycle`` (``open_run``)
and ``queries`` (the dashboard's read-only API). ORM objects never leave this package; nothing in
it imports torch.
"""
