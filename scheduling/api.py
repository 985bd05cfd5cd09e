"""The scheduler's routes: projects, tasks, dependencies and the critical path. Each is one call
into ``crud`` with a session from ``ReadSession`` (takes no write lock) or ``WriteSession``: a
request first waits for one of the database's ``SCHEDULING_DB_CONNECTIONS`` places on the event
loop (a full queue is answered 503 at once), and its session is closed, and its place freed, as
soon as the route returns, before the answer is sent. The app serving this router keeps the open
``database.Database`` in ``app.state.scheduling`` and answers ``errors``' exceptions
(``errors.install``)."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from scheduling import cpm, crud
from scheduling.schemas import (MAX_ID, CriticalPath, DependencyCreate, DependencyRead, PathId, ProjectCreate,
                                ProjectImport, ProjectImported, ProjectRead, TaskCreate, TaskRead, TaskUpdate)
from scheduling.tables import Dependency, Project, Task


async def read_session(request: Request) -> AsyncIterator[Session]:
    async with request.app.state.scheduling.session(write=False) as session:
        yield session


async def write_session(request: Request) -> AsyncIterator[Session]:
    async with request.app.state.scheduling.session(write=True) as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session, scope="function")]
WriteSession = Annotated[Session, Depends(write_session, scope="function")]

router = APIRouter()


# --------------------------------------------------------------------------------------------
# Projects

@router.post("/projects", status_code=201, response_model=ProjectRead, tags=["projects"])
def create_project(body: ProjectCreate, session: WriteSession) -> Project:
    return crud.create_project(session, body.name)


@router.post("/projects/import", status_code=201, response_model=ProjectImported, tags=["projects"],
             responses={409: {"description": "the dependencies contain a cycle; nothing is stored"}})
def import_project(body: ProjectImport, session: WriteSession) -> ProjectImported:
    """Create a project with its tasks and dependencies in one transaction: all or nothing."""
    return crud.import_project(session, body)


@router.get("/projects", response_model=list[ProjectRead], tags=["projects"])
def list_projects(session: ReadSession, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[Project]:
    return crud.list_projects(session, offset, limit)


@router.get("/projects/{project_id}", response_model=ProjectRead, tags=["projects"])
def get_project(project_id: PathId, session: ReadSession) -> Project:
    return crud.get_project(session, project_id)


@router.delete("/projects/{project_id}", status_code=204, tags=["projects"])
def delete_project(project_id: PathId, session: WriteSession) -> None:
    crud.delete_project(session, project_id)


# --------------------------------------------------------------------------------------------
# Tasks

@router.post("/projects/{project_id}/tasks", status_code=201, response_model=TaskRead, tags=["tasks"])
def create_task(project_id: PathId, body: TaskCreate, session: WriteSession) -> Task:
    return crud.create_task(session, project_id, body)


@router.get("/projects/{project_id}/tasks", response_model=list[TaskRead], tags=["tasks"])
def list_tasks(project_id: PathId, session: ReadSession) -> list[Task]:
    return crud.list_tasks(session, project_id)


@router.get("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def get_task(project_id: PathId, task_id: PathId, session: ReadSession) -> Task:
    return crud.get_task(session, project_id, task_id)


@router.patch("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def update_task(project_id: PathId, task_id: PathId, body: TaskUpdate, session: WriteSession) -> Task:
    return crud.update_task(session, project_id, task_id, body)


@router.put("/projects/{project_id}/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def replace_task(project_id: PathId, task_id: PathId, body: TaskCreate, session: WriteSession) -> Task:
    return crud.update_task(session, project_id, task_id, body)


@router.delete("/projects/{project_id}/tasks/{task_id}", status_code=204, tags=["tasks"])
def delete_task(project_id: PathId, task_id: PathId, session: WriteSession) -> None:
    """Deleting a task deletes its dependencies."""
    crud.delete_task(session, project_id, task_id)


# --------------------------------------------------------------------------------------------
# Dependencies

@router.post("/projects/{project_id}/dependencies", status_code=201, response_model=DependencyRead,
             tags=["dependencies"],
             responses={409: {"description": "duplicate, or it would close a cycle (ids in the message)"}})
def create_dependency(project_id: PathId, body: DependencyCreate, session: WriteSession) -> Dependency:
    """Checked against the project's links and inserted as one step (the project's row lock)."""
    return crud.create_dependency(session, project_id, body)


@router.get("/projects/{project_id}/dependencies", response_model=list[DependencyRead], tags=["dependencies"])
def list_dependencies(project_id: PathId, session: ReadSession) -> list[Dependency]:
    return crud.list_dependencies(session, project_id)


@router.delete("/projects/{project_id}/dependencies/{dependency_id}", status_code=204, tags=["dependencies"])
def delete_dependency(project_id: PathId, dependency_id: PathId, session: WriteSession) -> None:
    crud.delete_dependency(session, project_id, dependency_id)


# --------------------------------------------------------------------------------------------
# Critical path

@router.get("/projects/{project_id}/critical-path", response_model=CriticalPath, tags=["projects"])
def critical_path(project_id: PathId, session: ReadSession,
                  max_paths: Annotated[int, Query(ge=1, le=100, description="cap on listed tied chains")] = cpm.MAX_PATHS,
                  ) -> CriticalPath:
    """Early/late dates, floats and critical chains (conventions: scheduling/cpm.py)."""
    return crud.critical_path(session, project_id, max_paths)
