"""Database tables and the engine/session for the project scheduling API (SQLAlchemy 2).

``DATABASE_URL`` selects any SQLAlchemy database (e.g. ``postgresql+psycopg://...``); without it
a SQLite file at ``IMG2CQ_DB`` (default ``./img2cq.db``) is used. SQLite runs in WAL mode with
foreign keys on and a busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``: writers
queue up instead of failing, and a cycle check and the insert it guards see the same graph.
"""

import os
from collections.abc import Iterator

from sqlalchemy import (CheckConstraint, Engine, Float, ForeignKey, Integer, String, UniqueConstraint,
                        create_engine, event, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

BUSY_TIMEOUT_S = 30


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tasks: Mapped[list["Task"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Task.id")
    dependencies: Mapped[list["Dependency"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Dependency.id")


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    duration: Mapped[float] = mapped_column(Float)


class Dependency(Base):
    __tablename__ = "dependencies"
    __table_args__ = (
        UniqueConstraint("predecessor_id", "successor_id"),
        CheckConstraint("predecessor_id <> successor_id", name="no_self_loop"),
        CheckConstraint("type IN ('FS', 'SS', 'FF', 'SF')", name="known_type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    predecessor_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    successor_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(2), default="FS")
    lag: Mapped[float] = mapped_column(Float, default=0.0)


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or "sqlite:///" + os.environ.get("IMG2CQ_DB", "./img2cq.db")


def make_engine(url: str | None = None) -> Engine:
    """An engine for ``url`` (default: from the environment) with the SQLite settings above."""
    url = url or database_url()
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


def sessions(engine: Engine) -> Iterator[Session]:
    """One session per request, committed by the route; closed (rolled back if open) afterwards."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


def lock_project(session: Session, project_id: int) -> Project | None:
    """The project row, locked for the rest of the transaction where the database supports it
    (PostgreSQL ``FOR UPDATE``; SQLite already holds the write lock from ``BEGIN IMMEDIATE``)."""
    return session.scalars(select(Project).where(Project.id == project_id).with_for_update()).first()
