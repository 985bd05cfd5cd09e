"""Database tables and the engine/session for the project scheduling API (SQLAlchemy 2).

Any SQLAlchemy database works; two are tested. SQLite runs in WAL mode with foreign keys on and a
busy timeout. A transaction that may write starts with ``BEGIN IMMEDIATE`` (the default): writers
queue up instead of failing, and a cycle check and the insert it guards see the same graph. A
session opened with ``write=False`` starts with a plain ``BEGIN`` and takes no write lock: in WAL
mode readers never wait for the writer, nor it for them, and each still reads one snapshot. PostgreSQL
(``postgresql+psycopg://...``, the ``postgres`` extra) runs READ COMMITTED, so a statement issued
after a row lock is granted sees what the lock holder committed: ``lock_project`` serialises the
link inserts of one project across every process and replica; ``read_snapshot`` gives a read of
several tables one consistent view.
"""

from sqlalchemy import (BigInteger, CheckConstraint, Engine, Float, ForeignKey, Integer, String,
                        UniqueConstraint, create_engine, event, make_url, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from img2cq.cpm import LinkType

BUSY_TIMEOUT_S = 30
# 64-bit ids, as the API accepts; on SQLite INTEGER, which is already 64-bit and the rowid alias
IdType = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tasks: Mapped[list["Task"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Task.id")
    dependencies: Mapped[list["Dependency"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Dependency.id")


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    project_id: Mapped[int] = mapped_column(IdType, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    duration: Mapped[float] = mapped_column(Float)


class Dependency(Base):
    __tablename__ = "dependencies"
    __table_args__ = (
        UniqueConstraint("predecessor_id", "successor_id"),
        CheckConstraint("predecessor_id <> successor_id", name="no_self_loop"),
        CheckConstraint("type IN (" + ", ".join(f"'{t}'" for t in LinkType) + ")", name="known_type"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    project_id: Mapped[int] = mapped_column(IdType, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    predecessor_id: Mapped[int] = mapped_column(IdType, ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    successor_id: Mapped[int] = mapped_column(IdType, ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(2), default=LinkType.FS.value)
    lag: Mapped[float] = mapped_column(Float, default=0.0)


READ_ONLY = "img2cq_read_only"  # execution option of the sessions that only read


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


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def session(engine: Engine, write: bool = True) -> Session:
    """A session for one request, committed by its route and closed (rolled back if open) by its
    caller; its objects stay readable after both. ``write=False``: it only reads, and on SQLite
    takes no write lock."""
    return Session(engine if write else engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


def lock_project(session: Session, project_id: int) -> Project | None:
    """The project row, locked for the rest of the transaction where the database supports it
    (PostgreSQL ``FOR UPDATE``; SQLite already holds the write lock from ``BEGIN IMMEDIATE``)."""
    return session.scalars(select(Project).where(Project.id == project_id).with_for_update()).first()


def read_snapshot(session: Session) -> None:
    """Make the session's next transaction read one snapshot (call before its first query).
    PostgreSQL: REPEATABLE READ, so tasks and links read by two statements agree; SQLite already
    reads one snapshot per transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
