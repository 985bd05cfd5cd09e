"""The scheduler's database: engine, sessions, migrations at start, and the bounded wait for a
connection (SQLAlchemy 2, Alembic).

Any SQLAlchemy database works; two are tested. SQLite runs in WAL mode with foreign keys on and a
busy timeout. A transaction that may write starts with ``BEGIN IMMEDIATE`` (the default): writers
queue up instead of failing, and a cycle check and the insert it guards see the same graph. A
session opened with ``write=False`` starts with a plain ``BEGIN`` and takes no write lock: in WAL
mode readers never wait for the writer, nor it for them, and each still reads one snapshot. PostgreSQL
(``postgresql+psycopg://...``, the ``postgres`` extra) runs READ COMMITTED, so a statement issued
after a row lock is granted sees what the lock holder committed (``crud.lock_project`` serialises
the link inserts of one project across every process and replica; ``crud.read_snapshot`` gives a
read of several tables one consistent view).
"""

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from scheduling.errors import DatabaseBusy, DatabaseTimeout
from scheduling.settings import SchedulingSettings

BUSY_TIMEOUT_S = 30
READ_ONLY = "scheduling_read_only"  # execution option of the sessions that only read
HERE = Path(__file__).resolve().parent
INITIAL_REVISION = "0001"  # the schema the scheduler created before it had migrations
MIGRATION_LOCK = 0x5C4ED  # PostgreSQL advisory lock: one process migrates at a time


def make_engine(url: str, connections: int = 8) -> Engine:
    """An engine for ``url`` with the per-database settings above, at most ``connections`` open."""
    pool = {"pool_size": connections, "max_overflow": 0, "pool_timeout": BUSY_TIMEOUT_S}
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED", **pool)
    in_memory = make_url(url).database in (None, "", ":memory:")  # one connection per thread: no pool to size
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S},
                           **({} if in_memory else pool))

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    """The migrations' configuration (``alembic.ini`` beside this module)."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE / "migrations"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``alembic upgrade``) in one transaction. A database made
    before migrations existed (the tables, no ``alembic_version``) is first marked as being at the
    initial revision, whose tables it already has. On PostgreSQL an advisory lock makes replicas
    that start together migrate one after another; on SQLite ``BEGIN IMMEDIATE`` does."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "projects" in tables and "alembic_version" not in tables:
            command.stamp(config, INITIAL_REVISION)
        command.upgrade(config, revision)


def session(engine: Engine, write: bool = True) -> Session:
    """A session for one request, committed by its crud function and closed (rolled back if open)
    by its caller; its objects stay readable after both. ``write=False``: it only reads, and on
    SQLite takes no write lock."""
    return Session(engine if write else engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


class Gate:
    """At most ``limit`` holders at once; up to ``max_queue`` more wait (on the event loop, holding
    no thread), and the rest are refused at once."""

    def __init__(self, *, limit: int, max_queue: int):
        self.limit, self.max_queue = limit, max_queue
        self._free = asyncio.Semaphore(limit)
        self._waiting = 0
        self._last_hold_s = 0.05

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def admit(self, timeout: float) -> AsyncIterator[None]:
        """Hold one place for the block; DatabaseBusy when the queue is full, DatabaseTimeout when
        no place frees within ``timeout`` seconds."""
        if self._free.locked() and self._waiting >= self.max_queue:
            retry = max(1, math.ceil((self._waiting / self.limit + 1) * self._last_hold_s))
            raise DatabaseBusy(f"server busy: {self._waiting} requests already wait for the database", retry)
        self._waiting += 1
        try:
            async with asyncio.timeout(max(timeout, 0)):  # cancels the acquire itself: no place is lost
                await self._free.acquire()
        except TimeoutError:
            raise DatabaseTimeout(f"not answered within {timeout:.0f} s") from None
        finally:
            self._waiting -= 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._last_hold_s = time.perf_counter() - started
            self._free.release()


@dataclass
class Database:
    """The scheduler's database for one process: its engine, and the gate before its connections."""

    engine: Engine
    gate: Gate
    wait_timeout: float

    @classmethod
    @contextmanager
    def open(cls, settings: SchedulingSettings) -> Iterator["Database"]:
        """Connect to the configured database, migrate it to the newest revision, and yield it;
        the engine is disposed of afterwards."""
        url = settings.sqlalchemy_url()
        if url is None:
            raise ValueError("no database configured: set DATABASE_URL or SCHEDULING_DB")
        engine = make_engine(url, connections=settings.db_connections)
        try:
            migrate(engine)
            yield cls(engine, Gate(limit=settings.db_connections, max_queue=settings.db_queue_size),
                      settings.db_wait_timeout)
        finally:
            engine.dispose()

    @asynccontextmanager
    async def session(self, write: bool) -> AsyncIterator[Session]:
        """A session once a connection's place is free; closed, and the place freed, on leaving."""
        async with self.gate.admit(timeout=self.wait_timeout):
            opened = session(self.engine, write=write)
            try:
                yield opened
            finally:
                await run_in_threadpool(opened.close)
