"""The scheduler's tables (SQLAlchemy 2). They are created and changed only by the Alembic
revisions in ``migrations/``; a change here needs a new revision (``tests/test_scheduling.py``
checks that the migrated schema and these declarations agree)."""

from sqlalchemy import BigInteger, CheckConstraint, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from scheduling.cpm import LinkType

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
