"""The scheduler as a product of its own: its migrations (on an empty SQLite database and on
PostgreSQL: the tables exactly as the declarations in scheduling/tables.py, `upgrade head` then
`downgrade base` and back, a database made before migrations adopted with its data), the app
served alone, and its independence from the model package. The routes themselves are tested
through the front door in test_server.py, test_server_limits.py and test_server_live.py."""

import os
import subprocess
import sys

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from scheduling.database import alembic_config, make_engine, migrate
from scheduling.tables import Base, Project, Task
from tests.postgres import create_database

TABLES = {"projects", "tasks", "dependencies"}


def schema(engine) -> dict[str, str]:
    """SQLite's stored CREATE statements of the scheduler's tables and indexes, by name."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")).all()
    return {name: " ".join(sql.split()) for name, sql in rows if name != "alembic_version"}


def revision(engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def differences(engine) -> list:
    """What ``alembic revision --autogenerate`` would write: nothing when the schema is the tables'."""
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_migrations_create_the_tables_on_an_empty_sqlite_database(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    assert revision(engine) == "0001" and differences(engine) == []
    declared = create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    Base.metadata.create_all(declared)  # how the tables were made before migrations
    assert schema(engine) == schema(declared)  # the same tables, columns, constraints and indexes
    migrate(engine)  # at head already: nothing to do
    assert revision(engine) == "0001"
    engine.dispose()
    declared.dispose()


def test_upgrade_head_then_downgrade_base_round_trips_from_the_command_line(tmp_path, repo_root):
    """`alembic -c scheduling/alembic.ini ...` on the database the scheduler's settings name."""
    path = tmp_path / "cli.db"
    env = {**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, "SCHEDULING_DB": str(path)}

    def alembic(*args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "alembic", "-c", "scheduling/alembic.ini", *args], cwd=repo_root,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]

    engine = create_engine(f"sqlite:///{path}")
    alembic("upgrade", "head")
    assert TABLES <= set(inspect(engine).get_table_names()) and revision(engine) == "0001"
    alembic("downgrade", "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"} and revision(engine) is None
    alembic("upgrade", "head")
    assert TABLES <= set(inspect(engine).get_table_names()) and differences(engine) == []
    engine.dispose()


def test_a_database_made_before_migrations_keeps_its_data(tmp_path):
    """Tables made by ``create_all`` and no ``alembic_version``: marked as the initial revision,
    nothing recreated, every row kept."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        project = Project(name="kept")
        s.add(project)
        s.flush()
        s.add(Task(project_id=project.id, name="t", duration=2.0))
        s.commit()
    migrate(engine)
    assert revision(engine) == "0001"
    with Session(engine) as s:
        assert [(p.name, [t.name for t in p.tasks]) for p in s.query(Project)] == [("kept", ["t"])]
    engine.dispose()


def test_migrations_on_postgresql(postgres):
    engine = make_engine(create_database(postgres))
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    assert revision(engine) == "0001" and differences(engine) == []
    ids = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("dependencies")}
    assert ids["id"] == ids["predecessor_id"] == "BIGINT"  # 64-bit ids, as the API accepts
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    assert revision(engine) == "0001" and differences(engine) == []
    engine.dispose()


def test_the_scheduler_serves_alone(tmp_path, monkeypatch):
    """`uvicorn scheduling.main:app`: migrated at start, the routes, no model."""
    from scheduling.main import app

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SCHEDULING_DB", str(tmp_path / "alone.db"))
    body = {"name": "house", "tasks": [{"key": "a", "name": "a", "duration": 2}, {"key": "b", "name": "b", "duration": 3}],
            "dependencies": [{"predecessor": "a", "successor": "b"}]}
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        imported = client.post("/projects/import", json=body)
        assert imported.status_code == 201, imported.text
        pid, ids = imported.json()["id"], imported.json()["task_ids"]
        assert client.get(f"/projects/{pid}/critical-path").json()["critical_path"] == [ids["a"], ids["b"]]
        cycle = client.post(f"/projects/{pid}/dependencies", json={"predecessor_id": ids["b"], "successor_id": ids["a"]})
        assert cycle.status_code == 409 and "would close the cycle" in cycle.json()["detail"]
        assert client.post(f"/projects/{pid}/dependencies", json={"predecessor_id": ids["a"], "successor_id": 10**6}
                           ).json()["detail"][0]["loc"] == ["body", "successor_id"]
        assert client.get("/projects/999").status_code == 404
        nan = client.post("/projects", content=b'{"name": NaN}', headers={"content-type": "application/json"})
        assert nan.status_code == 422 and nan.json()["detail"][0]["input"] == "nan"
        assert client.post("/generate").status_code == 404  # no model here
    assert revision(make_engine(f"sqlite:///{tmp_path / 'alone.db'}")) == "0001"


def test_the_scheduler_loads_nothing_of_the_model_package(repo_root):
    code = ("import sys, scheduling.main\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'img2cq', 'metrics', 'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
