"""Every environment variable the model service reads, in one place (read once, at start). The
scheduler, which the front door serves beside it where a database is configured, has settings of
its own."""

import os

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    """Model service settings; each field is read from ``IMG2CQ_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="IMG2CQ_", extra="ignore")

    model: str | None = Field(None, description="model directory for /generate, loaded at start (warm_up) or "
                                                "on first use; unset: /generate answers 503")
    warm_up: bool = Field(True, description="load the model and the part library and start the search's build "
                                            "workers at start, in the background, so that the first /generate "
                                            "does not wait for them (about 8 s on two cores)")
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
    search_queue_size: int = Field(8, ge=1, description="/generate requests with test-time search (all but "
                                   "search=false) that may wait for their own lane; beyond it: 503 with "
                                   "Retry-After (search=false requests never wait behind them)")
    request_timeout: float = Field(120.0, gt=0, description="seconds a /generate or /score request may wait and "
                                                            "run before it is answered 504")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="largest request body (JSON) in bytes; a larger "
                                "Content-Length is answered 413 before reading, a chunked body is cut off there")
    max_image_bytes: int = Field(20 * 2**20, ge=1024, description="largest /generate upload in bytes (the "
                                 "multipart framing aside); beyond it: 413 before reading")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest picture, width x height, read from "
                                  "its header before decoding; beyond it: 400")
    max_image_side: int = Field(8192, ge=1, description="largest picture width or height, in pixels; beyond it: 400")
    torch_threads: int = Field(1, ge=1, le=usable_cpus(),
                               description="torch intra-op threads of the one generation thread; more help "
                                           "only on idle cores (on shared ones they wait for each other)")

    background_nice: int = Field(5, ge=0, le=19,
                                 description="niceness of generation and of the sandbox workers above the "
                                             "HTTP loop, so that /health and admission answer at once under load")

    search_train_json: str | None = Field(None, description="training split (jsonl) whose pictures "
                                          "/generate's search retrieves from (its library built beside it once); "
                                          "unset: the shipped part library")

    @field_validator("model", "search_train_json", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return value or None
