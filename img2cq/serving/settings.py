"""Every environment variable the server reads, in one place (read once, at start)."""

import os

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    """Server settings; each field is read from ``IMG2CQ_<NAME>`` (``DATABASE_URL`` as is)."""

    model_config = SettingsConfigDict(env_prefix="IMG2CQ_", extra="ignore")

    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"),
                                     description="any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; "
                                                 "unset: the SQLite file IMG2CQ_DB")
    db: str = Field("./img2cq.db", description="SQLite file used when DATABASE_URL is unset")
    model: str | None = Field(None, description="model directory for /generate, loaded on first use; "
                                                "unset: /generate answers 503")
    exec_workers: int = Field(default_factory=usable_cpus, ge=1,
                              description="sandbox worker processes (programs of /generate and /score); "
                                          "default: the usable CPUs")
    exec_timeout: float = Field(10.0, gt=0, description="wall-clock seconds per program in the sandbox")
    exec_memory_mb: int = Field(4096, ge=256, description="address-space limit per program, MiB")
    batch_size: int = Field(16, ge=1, le=256, description="most images in one batched generate call")
    batch_wait_ms: float = Field(20.0, ge=0, le=10_000,
                                 description="how long a batch waits for more images after its first")
    queue_size: int = Field(64, ge=1, description="requests that may wait for the model (and, separately, "
                                                 "for the sandbox); beyond it: 503 with Retry-After")
    request_timeout: float = Field(120.0, gt=0, description="seconds a /generate or /score request may wait and "
                                                            "run before it is answered 504")
    torch_threads: int = Field(1, ge=1, le=usable_cpus(),
                               description="torch intra-op threads of the one generation thread; more help "
                                           "only on idle cores (on shared ones they wait for each other)")

    background_nice: int = Field(5, ge=0, le=19,
                                 description="niceness of generation and of the sandbox workers above the "
                                             "HTTP loop, so that /health and admission answer at once under load")

    search_train_json: str | None = Field(None, description="training split (jsonl) whose retrieval index "
                                          "/generate?candidates=N draws candidates from (built beside it once); "
                                          "unset: model candidates only")

    @field_validator("database_url", "model", "search_train_json", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return value or None

    def sqlalchemy_url(self) -> str:
        return self.database_url or "sqlite:///" + self.db
