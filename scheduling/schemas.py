"""The scheduler's request and response bodies (pydantic), and the bounds every input obeys."""

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduling.cpm import LinkType

MAX_ID = 2**63 - 1  # ids are 64-bit (tables.IdType); larger ones cannot exist, so they are refused up front
MAX_AMOUNT = 1e9  # durations and lags, in any time unit: keeps every sum finite
MAX_IMPORT = 100_000


Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]  # NUL: not storable text
Amount = Annotated[float, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, allow_inf_nan=False)]
Duration = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


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
