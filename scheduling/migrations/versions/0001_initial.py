"""The initial schema: projects, tasks and dependencies, as the scheduler has always created them.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# 64-bit ids; on SQLite INTEGER, which is already 64-bit and the rowid alias
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", Id, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "tasks",
        sa.Column("id", Id, nullable=False),
        sa.Column("project_id", Id, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_tasks_project_id", "tasks", ["project_id"])
    op.create_table(
        "dependencies",
        sa.Column("id", Id, nullable=False),
        sa.Column("project_id", Id, nullable=False),
        sa.Column("predecessor_id", Id, nullable=False),
        sa.Column("successor_id", Id, nullable=False),
        sa.Column("type", sa.String(2), nullable=False),
        sa.Column("lag", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("predecessor_id", "successor_id"),
        sa.CheckConstraint("predecessor_id <> successor_id", name="no_self_loop"),
        sa.CheckConstraint("type IN ('FS', 'SS', 'FF', 'SF')", name="known_type"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["predecessor_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["successor_id"], ["tasks.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_dependencies_predecessor_id", "dependencies", ["predecessor_id"])
    op.create_index("ix_dependencies_successor_id", "dependencies", ["successor_id"])
    op.create_index("ix_dependencies_project_id", "dependencies", ["project_id"])


def downgrade() -> None:
    op.drop_table("dependencies")  # its indexes go with it
    op.drop_table("tasks")
    op.drop_table("projects")
