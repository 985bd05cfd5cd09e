"""The project critical-path API: request/response bodies, and thin routes over img2cq.db
(storage) and img2cq.cpm (scheduling).

Each route gets its session from ``ReadSession`` (takes no write lock) or ``WriteSession``; a
request first waits for one of the database's ``IMG2CQ_DB_CONNECTIONS`` places on the event loop
(a full queue is answered 503 at once), and its session is closed, and its place freed, as soon as
the route returns, before the answer is sent."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from img2cq import cpm, db
from img2cq.cpm import LinkType

MAX_ID = 2**63 - 1  # ids are 64-bit (img2cq.db.IdType); larger ones cannot exist, so they are refused up front
MAX_AMOUNT = 1e9  # durations and lags, in any time unit: keeps every sum finite
MAX_IMPORT = 100_000


Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]  # NUL: not storable text
Amount = Annotated[float, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, allow_inf_nan=False)]
Duration = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


# --------------------------------------------------------------------------------------------
# Request and response bodies

class Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ProjectCreate(BaseModel):
    name: Name


class ProjectRead(Read):
    id: int
    name: str


class TaskCreate(BaseModel):
    name: Name
    duration: Duration


class TaskUpdate(BaseModel):
    """PATCH body: only the fields given change."""

    name: Name | None = None
    duration: Duration | None = None


class TaskRead(Read):
    id: int
    project_id: int
    name: str
    duration: float


class DependencyCreate(BaseModel):
    predecessor_id: Id
    successor_id: Id
    type: LinkType = LinkType.FS
    lag: Amount = Field(0.0, description="time between the linked dates; negative = lead")

    @model_validator(mode="after")
    def _not_a_self_loop(self):
        if self.predecessor_id == self.successor_id:
            raise ValueError("a task cannot depend on itself")
        return self


class DependencyRead(Read):
    id: int
    project_id: int
    predecessor_id: int
    successor_id: int
    type: LinkType
    lag: float


class ImportTask(BaseModel):
    key: Annotated[str, Field(min_length=1, max_length=200)]  # never stored
    name: Name
    duration: Duration


class ImportDependency(BaseModel):
    predecessor: str
    successor: str
    type: LinkType = LinkType.FS
    lag: Amount = 0.0


class ProjectImport(BaseModel):
    """A whole project; dependencies name tasks by their ``key``, local to this body."""

    name: Name
    tasks: list[ImportTask] = Field(default_factory=list, max_length=MAX_IMPORT)
    dependencies: list[ImportDependency] = Field(default_factory=list, max_length=3 * MAX_IMPORT)

    @model_validator(mode="after")
    def _keys_consistent(self):
        keys = [t.key for t in self.tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("task keys must be unique")
        known, pairs = set(keys), set()
        for d in self.dependencies:
            for key in (d.predecessor, d.successor):
                if key not in known:
                    raise ValueError(f"dependency names unknown task key {key!r}")
            if d.predecessor == d.successor:
                raise ValueError(f"task {d.predecessor!r} cannot depend on itself")
            if (d.predecessor, d.successor) in pairs:
                raise ValueError(f"duplicate dependency {d.predecessor!r} -> {d.successor!r}")
            pairs.add((d.predecessor, d.successor))
        return self


class ProjectImported(ProjectRead):
    task_ids: dict[str, int] = Field(description="task key -> stored task id")


class ScheduledTask(BaseModel):
    id: int
    name: str
    duration: float
    earliest_start: float
    earliest_finish: float
    latest_start: float
    latest_finish: float
    total_float: float
    free_float: float
    critical: bool


class CriticalPath(BaseModel):
    project_id: int
    duration: float
    critical_path: list[int] = Field(description="the first critical chain, task ids start to finish")
    critical_paths: list[list[int]] = Field(description="every tied critical chain, at most max_paths")
    critical_paths_truncated: bool = Field(description="true when more than max_paths chains tie")
    tasks: list[ScheduledTask]


# --------------------------------------------------------------------------------------------
# Routes

router = APIRouter()


class NoDatabase(Exception):
    pass


@asynccontextmanager
async def _session(request: Request, write: bool) -> AsyncIterator[Session]:
    state = request.app.state
    if state.engine is None:
        raise NoDatabase("no database configured: start the server with DATABASE_URL or IMG2CQ_DB")
    async with state.database_gate.admit(timeout=state.settings.request_timeout):
        session = db.session(state.engine, write=write)
        try:
            yield session
        finally:
            await run_in_threadpool(session.close)


async def read_session(request: Request) -> AsyncIterator[Session]:
    async with _session(request, write=False) as session:
        yield session


async def write_session(request: Request) -> AsyncIterator[Session]:
    async with _session(request, write=True) as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session, scope="function")]
WriteSession = Annotated[Session, Depends(write_session, scope="function")]


def _field_error(field: str, message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, for checks that need the database."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": message, "input": None}])


def _project(session: Session, project_id: int, lock: bool = False) -> db.Project:
    project = db.lock_project(session, project_id) if lock else session.get(db.Project, project_id)
    if project is None:
        raise HTTPException(404, f"project {project_id} not found")
    return project


def _task(session: Session, project_id: int, task_id: int) -> db.Task:
    task = session.get(db.Task, task_id)
    if task is None or task.project_id != project_id:
        raise HTTPException(404, f"task {task_id} not found in project {project_id}")
    return task


# --------------------------------------------------------------------------------------------
# Projects

@router.post("/projects", status_code=201, response_model=ProjectRead, tags=["projects"])
def create_project(body: ProjectCreate, session: WriteSession) -> db.Project:
    project = db.Project(name=body.name)
    session.add(project)
    session.commit()
    return project


@router.post("/projects/import", status_code=201, response_model=ProjectImported, tags=["projects"],
          responses={409: {"description": "the dependencies contain a cycle; nothing is stored"}})
def import_project(body: ProjectImport, session: WriteSession) -> ProjectImported:
    """Create a project with its tasks and dependencies in one transaction: all or nothing."""
    cycle = cpm.find_cycle([t.key for t in body.tasks], [(d.predecessor, d.successor) for d in body.dependencies])
    if cycle:
        raise HTTPException(409, "dependencies contain the cycle " + " -> ".join(cycle) + "; nothing was stored")
    project = db.Project(name=body.name)
    session.add(project)
    session.flush()
    ids = {}
    if body.tasks:  # bulk INSERT ... RETURNING, ids in parameter order: no per-row ORM overhead
        rows = [{"project_id": project.id, "name": t.name, "duration": t.duration} for t in body.tasks]
        returned = session.scalars(insert(db.Task).returning(db.Task.id, sort_by_parameter_order=True), rows)
        ids = dict(zip((t.key for t in body.tasks), returned))
    if body.dependencies:
        session.execute(insert(db.Dependency), [
            {"project_id": project.id, "predecessor_id": ids[d.predecessor], "successor_id": ids[d.successor],
             "type": d.type, "lag": d.lag} for d in body.dependencies])
    session.commit()
    return ProjectImported(id=project.id, name=project.name, task_ids=ids)


@router.get("/projects", response_model=list[ProjectRead], tags=["projects"])
def list_projects(session: ReadSession, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[db.Project]:
    return list(session.scalars(select(db.Project).order_by(db.Project.id).offset(offset).limit(limit)))


@router.get("/projects/{project_id}", response_model=ProjectRead, tags=["projects"])
def get_project(project_id: PathId, session: ReadSession) -> db.Project:
    return _project(session, project_id)


@router.delete("/projects/{project_id}", status_code=204, tags=["projects"])
def delete_project(project_id: PathId, session: WriteSession) -> None:
    session.delete(_project(session, project_id))
    session.commit()


# --------------------------------------------------------------------------------------------
# Tasks

@router.post("/projects/{project_id}/tasks", status_code=201, response_model=TaskRead, tags=["tasks"])
def create_task(project_id: PathId, body: TaskCreate, session: WriteSession) -> db.Task:
    task = db.Task(project_id=_project(session, project_id).id, name=body.name, duration=body.duration)
    session.add(task)
    session.commit()
    return task


@router.get("/projects/{project_id}/tasks", response_model=list[TaskRead], tags=["tasks"])
def list_tasks(project_id: PathId, session: ReadSession) -> list[db.Task]:
    return _project(session, project_id).tasks


@router.get("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def get_task(project_id: PathId, task_id: PathId, session: ReadSession) -> db.Task:
    return _task(session, project_id, task_id)


@router.patch("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def update_task(project_id: PathId, task_id: PathId, body: TaskUpdate, session: WriteSession) -> db.Task:
    task = _task(session, project_id, task_id)
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(task, field, value)
    session.commit()
    return task


@router.put("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def replace_task(project_id: PathId, task_id: PathId, body: TaskCreate, session: WriteSession) -> db.Task:
    task = _task(session, project_id, task_id)
    task.name, task.duration = body.name, body.duration
    session.commit()
    return task


@router.delete("/projects/{project_id}/tasks/{task_id}", status_code=204, tags=["tasks"])
def delete_task(project_id: PathId, task_id: PathId, session: WriteSession) -> None:
    """Deleting a task deletes its dependencies."""
    session.delete(_task(session, project_id, task_id))
    session.commit()


# --------------------------------------------------------------------------------------------
# Dependencies

@router.post("/projects/{project_id}/dependencies", status_code=201, response_model=DependencyRead,
          tags=["dependencies"],
          responses={409: {"description": "duplicate, or it would close a cycle (ids in the message)"}})
def create_dependency(project_id: PathId, body: DependencyCreate, session: WriteSession) -> db.Dependency:
    """The project row lock makes the cycle check and the insert one step: links of one project
    are added one at a time, by any number of server processes."""
    _project(session, project_id, lock=True)
    for field in ("predecessor_id", "successor_id"):
        task = session.get(db.Task, getattr(body, field))
        if task is None or task.project_id != project_id:
            raise _field_error(field, f"task {getattr(body, field)} is not in project {project_id}")
    new = (body.predecessor_id, body.successor_id)
    links = [tuple(row) for row in session.execute(
        select(db.Dependency.predecessor_id, db.Dependency.successor_id).where(db.Dependency.project_id == project_id))]
    if new in links:
        raise HTTPException(409, f"dependency {new[0]} -> {new[1]} already exists")
    linked = sorted({task for pair in links + [new] for task in pair})  # only linked tasks can be on a cycle
    cycle = cpm.find_cycle(linked, links + [new])
    if cycle:
        raise HTTPException(409, f"dependency {new[0]} -> {new[1]} would close the cycle " + " -> ".join(map(str, cycle)))
    dependency = db.Dependency(project_id=project_id, **body.model_dump())
    session.add(dependency)
    session.commit()
    return dependency


@router.get("/projects/{project_id}/dependencies", response_model=list[DependencyRead], tags=["dependencies"])
def list_dependencies(project_id: PathId, session: ReadSession) -> list[db.Dependency]:
    return _project(session, project_id).dependencies


@router.delete("/projects/{project_id}/dependencies/{dependency_id}", status_code=204, tags=["dependencies"])
def delete_dependency(project_id: PathId, dependency_id: PathId, session: WriteSession) -> None:
    dependency = session.get(db.Dependency, dependency_id)
    if dependency is None or dependency.project_id != project_id:
        raise HTTPException(404, f"dependency {dependency_id} not found in project {project_id}")
    session.delete(dependency)
    session.commit()


# --------------------------------------------------------------------------------------------
# Critical path

@router.get("/projects/{project_id}/critical-path", response_model=CriticalPath, tags=["projects"])
def critical_path(project_id: PathId, session: ReadSession,
                  max_paths: Annotated[int, Query(ge=1, le=100, description="cap on listed tied chains")] = cpm.MAX_PATHS,
                  ) -> CriticalPath:
    """Early/late dates, floats and critical chains (conventions: img2cq/cpm.py)."""
    db.read_snapshot(session)
    _project(session, project_id)
    tasks = session.execute(select(db.Task.id, db.Task.name, db.Task.duration)
                            .where(db.Task.project_id == project_id).order_by(db.Task.id)).all()
    links = session.execute(select(db.Dependency.predecessor_id, db.Dependency.successor_id,
                                   db.Dependency.type, db.Dependency.lag)
                            .where(db.Dependency.project_id == project_id)).all()
    try:
        result = cpm.schedule({t.id: t.duration for t in tasks}, [tuple(link) for link in links], max_paths)
    except cpm.CycleError as e:  # only reachable on a database without row locks (neither tested one)
        raise HTTPException(409, str(e)) from None
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
