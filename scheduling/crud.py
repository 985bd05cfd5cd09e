"""Every read and write of the scheduler's tables, each with the request's session: lookups that
answer ``NotFound``, the project row lock and the cycle check before a link is inserted, bulk
inserts for a whole project, and the critical path read in one snapshot. Each write commits; the
routes (``api``) only call these."""

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from scheduling import cpm
from scheduling.errors import Conflict, InvalidField, NotFound
from scheduling.schemas import (CriticalPath, DependencyCreate, ProjectImport, ProjectImported, ScheduledTask,
                                TaskCreate, TaskUpdate)
from scheduling.tables import Dependency, Project, Task

# --------------------------------------------------------------------------------------------
# Locking and snapshots


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


# --------------------------------------------------------------------------------------------
# Projects

def get_project(session: Session, project_id: int, lock: bool = False) -> Project:
    project = lock_project(session, project_id) if lock else session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return project


def list_projects(session: Session, offset: int, limit: int) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id).offset(offset).limit(limit)))


def create_project(session: Session, name: str) -> Project:
    project = Project(name=name)
    session.add(project)
    session.commit()
    return project


def import_project(session: Session, body: ProjectImport) -> ProjectImported:
    """A project with its tasks and dependencies in one transaction: all or nothing."""
    cycle = cpm.find_cycle([t.key for t in body.tasks], [(d.predecessor, d.successor) for d in body.dependencies])
    if cycle:
        raise Conflict("dependencies contain the cycle " + " -> ".join(cycle) + "; nothing was stored")
    project = Project(name=body.name)
    session.add(project)
    session.flush()
    ids = {}
    if body.tasks:  # bulk INSERT ... RETURNING, ids in parameter order: no per-row ORM overhead
        rows = [{"project_id": project.id, "name": t.name, "duration": t.duration} for t in body.tasks]
        returned = session.scalars(insert(Task).returning(Task.id, sort_by_parameter_order=True), rows)
        ids = dict(zip((t.key for t in body.tasks), returned))
    if body.dependencies:
        session.execute(insert(Dependency), [
            {"project_id": project.id, "predecessor_id": ids[d.predecessor], "successor_id": ids[d.successor],
             "type": d.type, "lag": d.lag} for d in body.dependencies])
    session.commit()
    return ProjectImported(id=project.id, name=project.name, task_ids=ids)


def delete_project(session: Session, project_id: int) -> None:
    """Its tasks and dependencies go with it."""
    session.delete(get_project(session, project_id))
    session.commit()


# --------------------------------------------------------------------------------------------
# Tasks

def get_task(session: Session, project_id: int, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.project_id != project_id:
        raise NotFound(f"task {task_id} not found in project {project_id}")
    return task


def list_tasks(session: Session, project_id: int) -> list[Task]:
    return get_project(session, project_id).tasks


def create_task(session: Session, project_id: int, body: TaskCreate) -> Task:
    task = Task(project_id=get_project(session, project_id).id, name=body.name, duration=body.duration)
    session.add(task)
    session.commit()
    return task


def update_task(session: Session, project_id: int, task_id: int, body: TaskUpdate | TaskCreate) -> Task:
    """PATCH (``TaskUpdate``: the fields given) or PUT (``TaskCreate``: every field)."""
    task = get_task(session, project_id, task_id)
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(task, field, value)
    session.commit()
    return task


def delete_task(session: Session, project_id: int, task_id: int) -> None:
    """Its dependencies go with it."""
    session.delete(get_task(session, project_id, task_id))
    session.commit()


# --------------------------------------------------------------------------------------------
# Dependencies

def create_dependency(session: Session, project_id: int, body: DependencyCreate) -> Dependency:
    """The project row lock makes the cycle check and the insert one step: links of one project
    are added one at a time, by any number of server processes."""
    get_project(session, project_id, lock=True)
    for field in ("predecessor_id", "successor_id"):
        task = session.get(Task, getattr(body, field))
        if task is None or task.project_id != project_id:
            raise InvalidField(field, f"task {getattr(body, field)} is not in project {project_id}")
    new = (body.predecessor_id, body.successor_id)
    links = [tuple(row) for row in session.execute(
        select(Dependency.predecessor_id, Dependency.successor_id).where(Dependency.project_id == project_id))]
    if new in links:
        raise Conflict(f"dependency {new[0]} -> {new[1]} already exists")
    linked = sorted({task for pair in links + [new] for task in pair})  # only linked tasks can be on a cycle
    cycle = cpm.find_cycle(linked, links + [new])
    if cycle:
        raise Conflict(f"dependency {new[0]} -> {new[1]} would close the cycle " + " -> ".join(map(str, cycle)))
    dependency = Dependency(project_id=project_id, **body.model_dump())
    session.add(dependency)
    session.commit()
    return dependency


def list_dependencies(session: Session, project_id: int) -> list[Dependency]:
    return get_project(session, project_id).dependencies


def delete_dependency(session: Session, project_id: int, dependency_id: int) -> None:
    dependency = session.get(Dependency, dependency_id)
    if dependency is None or dependency.project_id != project_id:
        raise NotFound(f"dependency {dependency_id} not found in project {project_id}")
    session.delete(dependency)
    session.commit()


# --------------------------------------------------------------------------------------------
# Critical path

def critical_path(session: Session, project_id: int, max_paths: int = cpm.MAX_PATHS) -> CriticalPath:
    """Early/late dates, floats and critical chains of the stored project, read in one snapshot
    (a cycle, only storable on a database without row locks, raises ``cpm.CycleError``)."""
    read_snapshot(session)
    get_project(session, project_id)
    tasks = session.execute(select(Task.id, Task.name, Task.duration)
                            .where(Task.project_id == project_id).order_by(Task.id)).all()
    links = session.execute(select(Dependency.predecessor_id, Dependency.successor_id, Dependency.type, Dependency.lag)
                            .where(Dependency.project_id == project_id)).all()
    result = cpm.schedule({t.id: t.duration for t in tasks}, [tuple(link) for link in links], max_paths)
    columns = zip(result.earliest_start.tolist(), result.earliest_finish.tolist(), result.latest_start.tolist(),
                  result.latest_finish.tolist(), result.total_float.tolist(), result.free_float.tolist(),
                  result.critical.tolist())
    return CriticalPath(
        project_id=project_id,
        duration=result.duration,
        critical_path=result.critical_paths[0] if result.critical_paths else [],
        critical_paths=result.critical_paths,
        critical_paths_truncated=result.critical_paths_truncated,
        tasks=[ScheduledTask(id=t.id, name=t.name, duration=t.duration, earliest_start=es, earliest_finish=ef,
                             latest_start=ls, latest_finish=lf, total_float=tf, free_float=ff, critical=c)
               for t, (es, ef, ls, lf, tf, ff, c) in zip(tasks, columns)],
    )
