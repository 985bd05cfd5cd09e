"""img2cq over HTTP: the project critical-path API on a database, and the model and metrics.

    uvicorn server:app                      # docs at http://127.0.0.1:8000/docs

Environment (read at start): ``DATABASE_URL`` or ``IMG2CQ_DB`` (see img2cq/db.py), ``IMG2CQ_MODEL``
(a model directory for /generate), ``IMG2CQ_EXEC_WORKERS`` / ``IMG2CQ_EXEC_TIMEOUT`` /
``IMG2CQ_EXEC_MEMORY_MB`` (the sandbox that runs every program; programs never run in here).
Routes are thin: scheduling is img2cq.cpm, storage img2cq.db, programs img2cq.executor.
"""

import io
import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from img2cq import cpm, db

MAX_ID = 2**63 - 1  # SQL BIGINT; larger ids cannot exist, so they are refused up front
MAX_AMOUNT = 1e9  # durations and lags, in any time unit: keeps every sum finite
MAX_IMPORT = 100_000
MAX_PROGRAM_CHARS = 100_000
MAX_IMAGE_BYTES = 20 * 2**20


Name = Annotated[str, Field(min_length=1, max_length=200)]
Amount = Annotated[float, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, allow_inf_nan=False)]
Duration = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
DependencyType = Literal["FS", "SS", "FF", "SF"]


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
    type: DependencyType = "FS"
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
    type: DependencyType
    lag: float


class ImportTask(BaseModel):
    key: Annotated[str, Field(min_length=1, max_length=200)]
    name: Name
    duration: Duration


class ImportDependency(BaseModel):
    predecessor: str
    successor: str
    type: DependencyType = "FS"
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


class ScoreRequest(BaseModel):
    reference: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program of the target part")
    candidate: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program to score")


class ScoreResult(BaseModel):
    reference_valid: bool
    candidate_valid: bool
    candidate_error: str | None
    iou: float | None = Field(description="0 when the candidate fails; null when the reference itself fails")


class Generated(BaseModel):
    program: str
    valid: bool
    error: str | None


class Health(BaseModel):
    status: Literal["ok"]
    model_configured: bool


# --------------------------------------------------------------------------------------------
# Application state: database, sandbox, model

@asynccontextmanager
async def lifespan(app: FastAPI):
    """Create the schema and one sandbox for the app's lifetime; the model loads on first use."""
    from img2cq.executor import Executor

    app.state.engine = db.make_engine()
    db.create_schema(app.state.engine)
    app.state.executor = Executor(
        workers=int(os.environ.get("IMG2CQ_EXEC_WORKERS", "1")),
        timeout=float(os.environ.get("IMG2CQ_EXEC_TIMEOUT", "10")),
        memory_mb=int(os.environ.get("IMG2CQ_EXEC_MEMORY_MB", "4096")),
    )
    app.state.model_dir = os.environ.get("IMG2CQ_MODEL") or None
    app.state.model = None
    app.state.model_lock = threading.Lock()
    try:
        yield
    finally:
        app.state.executor.close()
        app.state.engine.dispose()


app = FastAPI(title="img2cq", summary="Image -> CadQuery code, and a project critical-path API",
              lifespan=lifespan)


def get_session(request: Request) -> Iterator[Session]:
    yield from db.sessions(request.app.state.engine)


SessionDep = Annotated[Session, Depends(get_session)]


def _printable(value):
    """Non-finite floats as strings ("nan", "inf"): JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped, so a 422 that echoes undecodable input (a lone
    surrogate is valid JSON but not valid UTF-8) still renders."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


@app.exception_handler(RequestValidationError)
def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe to render whatever input it echoes (NaN, Infinity, lone surrogates)."""
    return _AsciiJSONResponse({"detail": _printable(jsonable_encoder(exc.errors()))}, status_code=422)


@app.exception_handler(IntegrityError)
def _integrity_error(_request: Request, exc: IntegrityError) -> JSONResponse:
    """A concurrent request won a race on a constraint (duplicate link, deleted task)."""
    return JSONResponse({"detail": f"conflicts with stored data: {exc.orig}"}, status_code=409)


@app.exception_handler(OperationalError)
def _database_busy(_request: Request, exc: OperationalError) -> JSONResponse:
    return JSONResponse({"detail": f"database unavailable, retry: {exc.orig}"}, status_code=503)


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

@app.post("/projects", status_code=201, response_model=ProjectRead, tags=["projects"])
def create_project(body: ProjectCreate, session: SessionDep) -> db.Project:
    project = db.Project(name=body.name)
    session.add(project)
    session.commit()
    return project


@app.post("/projects/import", status_code=201, response_model=ProjectImported, tags=["projects"],
          responses={409: {"description": "the dependencies contain a cycle; nothing is stored"}})
def import_project(body: ProjectImport, session: SessionDep) -> ProjectImported:
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


@app.get("/projects", response_model=list[ProjectRead], tags=["projects"])
def list_projects(session: SessionDep, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[db.Project]:
    return list(session.scalars(select(db.Project).order_by(db.Project.id).offset(offset).limit(limit)))


@app.get("/projects/{project_id}", response_model=ProjectRead, tags=["projects"])
def get_project(project_id: PathId, session: SessionDep) -> db.Project:
    return _project(session, project_id)


@app.delete("/projects/{project_id}", status_code=204, tags=["projects"])
def delete_project(project_id: PathId, session: SessionDep) -> None:
    session.delete(_project(session, project_id))
    session.commit()


# --------------------------------------------------------------------------------------------
# Tasks

@app.post("/projects/{project_id}/tasks", status_code=201, response_model=TaskRead, tags=["tasks"])
def create_task(project_id: PathId, body: TaskCreate, session: SessionDep) -> db.Task:
    task = db.Task(project_id=_project(session, project_id).id, name=body.name, duration=body.duration)
    session.add(task)
    session.commit()
    return task


@app.get("/projects/{project_id}/tasks", response_model=list[TaskRead], tags=["tasks"])
def list_tasks(project_id: PathId, session: SessionDep) -> list[db.Task]:
    return _project(session, project_id).tasks


@app.get("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def get_task(project_id: PathId, task_id: PathId, session: SessionDep) -> db.Task:
    return _task(session, project_id, task_id)


@app.patch("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def update_task(project_id: PathId, task_id: PathId, body: TaskUpdate, session: SessionDep) -> db.Task:
    task = _task(session, project_id, task_id)
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(task, field, value)
    session.commit()
    return task


@app.put("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def replace_task(project_id: PathId, task_id: PathId, body: TaskCreate, session: SessionDep) -> db.Task:
    task = _task(session, project_id, task_id)
    task.name, task.duration = body.name, body.duration
    session.commit()
    return task


@app.delete("/projects/{project_id}/tasks/{task_id}", status_code=204, tags=["tasks"])
def delete_task(project_id: PathId, task_id: PathId, session: SessionDep) -> None:
    """Deleting a task deletes its dependencies."""
    session.delete(_task(session, project_id, task_id))
    session.commit()


# --------------------------------------------------------------------------------------------
# Dependencies

@app.post("/projects/{project_id}/dependencies", status_code=201, response_model=DependencyRead,
          tags=["dependencies"],
          responses={409: {"description": "duplicate, or it would close a cycle (ids in the message)"}})
def create_dependency(project_id: PathId, body: DependencyCreate, session: SessionDep) -> db.Dependency:
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
    task_ids = session.scalars(select(db.Task.id).where(db.Task.project_id == project_id)).all()
    cycle = cpm.find_cycle(task_ids, links + [new])
    if cycle:
        raise HTTPException(409, f"dependency {new[0]} -> {new[1]} would close the cycle " + " -> ".join(map(str, cycle)))
    dependency = db.Dependency(project_id=project_id, **body.model_dump())
    session.add(dependency)
    session.commit()
    return dependency


@app.get("/projects/{project_id}/dependencies", response_model=list[DependencyRead], tags=["dependencies"])
def list_dependencies(project_id: PathId, session: SessionDep) -> list[db.Dependency]:
    return _project(session, project_id).dependencies


@app.delete("/projects/{project_id}/dependencies/{dependency_id}", status_code=204, tags=["dependencies"])
def delete_dependency(project_id: PathId, dependency_id: PathId, session: SessionDep) -> None:
    dependency = session.get(db.Dependency, dependency_id)
    if dependency is None or dependency.project_id != project_id:
        raise HTTPException(404, f"dependency {dependency_id} not found in project {project_id}")
    session.delete(dependency)
    session.commit()


# --------------------------------------------------------------------------------------------
# Critical path

@app.get("/projects/{project_id}/critical-path", response_model=CriticalPath, tags=["projects"])
def critical_path(project_id: PathId, session: SessionDep,
                  max_paths: Annotated[int, Query(ge=1, le=100, description="cap on listed tied chains")] = cpm.MAX_PATHS,
                  ) -> CriticalPath:
    """Early/late dates, floats and critical chains (conventions: img2cq/cpm.py)."""
    _project(session, project_id)
    tasks = session.execute(select(db.Task.id, db.Task.name, db.Task.duration)
                            .where(db.Task.project_id == project_id).order_by(db.Task.id)).all()
    links = session.execute(select(db.Dependency.predecessor_id, db.Dependency.successor_id,
                                   db.Dependency.type, db.Dependency.lag)
                            .where(db.Dependency.project_id == project_id)).all()
    try:
        result = cpm.schedule({t.id: t.duration for t in tasks}, [tuple(link) for link in links], max_paths)
    except cpm.CycleError as e:  # only reachable if a database without row locks let two racing links in
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


# --------------------------------------------------------------------------------------------
# Model and metrics

def _model(app: FastAPI):
    """The configured model, loaded once on first use (a lock keeps concurrent requests from
    loading it twice)."""
    if app.state.model_dir is None:
        raise HTTPException(503, "no model configured: start the server with IMG2CQ_MODEL=/path/to/model_dir")
    with app.state.model_lock:
        if app.state.model is None:
            from img2cq.modeling import ModelError, load_pretrained

            try:
                app.state.model = load_pretrained(app.state.model_dir)
            except (ModelError, OSError, ValueError) as e:
                raise HTTPException(503, f"model in {app.state.model_dir} could not be loaded: {e}") from None
        return app.state.model


def _image(data: bytes):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise HTTPException(400, f"not a readable image: {e}") from None


@app.post("/generate", response_model=Generated, tags=["model"],
          responses={400: {"description": "not a readable image"}, 413: {"description": "image too large"},
                     503: {"description": "no model configured"}})
def generate(request: Request, image: UploadFile,
             max_new_tokens: Annotated[int | None, Query(ge=1, le=4096, description="cap on generated tokens "
                                                          "(default: the model's context length)")] = None,
             ) -> Generated:
    """Write a CadQuery program for an uploaded picture, and check that it builds a solid."""
    model = _model(request.app)
    data = image.file.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"image larger than {MAX_IMAGE_BYTES} bytes")
    program = model.generate([_image(data)], max_new_tokens=max_new_tokens)[0]
    result = request.app.state.executor.run(program, mesh=False)
    return Generated(program=program, valid=result.ok, error=result.reason or None)


@app.post("/score", response_model=ScoreResult, tags=["model"])
def score(request: Request, body: ScoreRequest) -> ScoreResult:
    """IoU of the candidate's solid against the reference's, both run in the sandbox."""
    from metrics.best_iou import score_pair

    result = score_pair(body.reference, body.candidate, executor=request.app.state.executor)
    return ScoreResult(**result)


@app.get("/health", response_model=Health, tags=["service"])
def health(request: Request, session: SessionDep) -> Health:
    """Up, and the database answers."""
    session.execute(select(1))
    return Health(status="ok", model_configured=request.app.state.model_dir is not None)
