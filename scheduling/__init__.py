"""The project critical-path scheduler, a product of its own: projects, tasks and dependencies on a
database, and their critical path.

``cpm`` is the pure critical-path method; ``tables`` the SQLAlchemy tables, created and changed
only by the Alembic revisions in ``migrations/``; ``database`` the engine, sessions, migrations at
start and the bounded wait for a connection; ``crud`` every read and write (locking, cycle checks,
inserts); ``schemas`` the request and response bodies; ``api`` the thin router; ``errors`` the
mapping of its failures to HTTP answers; ``settings`` its environment. ``main`` serves it alone
(``uvicorn scheduling.main:app``); the img2cq server mounts the same router when a database is
configured. Nothing here imports the model package ``img2cq``.
"""
