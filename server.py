"""The front door: the img2cq model service and, where a database is configured, the scheduler.

    uvicorn server:app                      # docs at http://127.0.0.1:8000/docs

Two products, composed here and nowhere else (neither package imports the other). The model and
metrics are img2cq.serving.model_api, batched by img2cq.serving.batching, with the settings of
img2cq/serving/settings.py; it needs no database, and /health never touches one. The project
critical-path API is the package ``scheduling`` (its settings: scheduling/settings.py): when
DATABASE_URL or the SQLite file of SCHEDULING_DB / IMG2CQ_DB (default ./img2cq.db) is configured,
the lifespan migrates that database to the newest revision and mounts its router; with neither
(IMG2CQ_DB set empty, no DATABASE_URL) its routes are not served. Settings are read at start;
programs run only in
the sandbox (img2cq.sandbox), never in this process.
"""

from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel

import scheduling.api
import scheduling.errors
from img2cq.serving import errors, model_api, page
from img2cq.serving.batching import Lane
from img2cq.serving.settings import Settings
from scheduling.database import Database
from scheduling.settings import SchedulingSettings


class Health(BaseModel):
    status: Literal["ok"]
    model_configured: bool


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Read the settings; one sandbox and the batchers, and the scheduler where a database is
    configured, for the app's lifetime."""
    from img2cq.sandbox import Executor
    from img2cq.search import PRELOAD  # workers ready to render: /generate's search compares renders

    settings = app.state.settings = Settings()
    scheduler = ExitStack()
    app.state.scheduling = serve_scheduler(app, scheduler)
    app.state.executor = Executor(workers=settings.exec_workers, timeout=settings.exec_timeout,
                                  memory_mb=settings.exec_memory_mb, preload=PRELOAD, nice=settings.background_nice)
    app.state.sandbox = Lane(workers=settings.exec_workers, max_queue=settings.queue_size, name="sandbox")
    app.state.model_dir = settings.model
    app.state.model_service = model_api.ModelService(
        settings.model, torch_threads=settings.torch_threads, max_batch=settings.batch_size,
        max_wait_s=settings.batch_wait_ms / 1000, max_queue=settings.queue_size, executor=app.state.executor,
        search_train_json=settings.search_train_json, nice=settings.background_nice,
        search_queue=settings.search_queue_size, warm_up=settings.warm_up)
    app.state.model_service.start()
    try:
        yield
    finally:
        await app.state.model_service.stop()
        app.state.sandbox.close()
        app.state.executor.close()
        scheduler.close()


def serve_scheduler(app: FastAPI, stack: ExitStack) -> Database | None:
    """Where the scheduler's settings name a database: open it (migrated to the newest revision)
    and mount the scheduling routes, both until ``stack`` closes; the open database, else None."""
    settings = SchedulingSettings()
    if not settings.configured:
        return None
    database = stack.enter_context(Database.open(settings))
    stack.enter_context(mounted(app, scheduling.api.router))
    return database


@contextmanager
def mounted(app: FastAPI, router: APIRouter):
    """``router``'s routes served (and in /openapi.json) for the block only: the app object is
    built once, at import, while whether the scheduler is served is settled at start."""
    before = list(app.router.routes)
    app.include_router(router)
    app.openapi_schema = None
    try:
        yield
    finally:
        app.router.routes[:] = before
        app.openapi_schema = None


class RefuseAtTheDoor:
    """POST /generate is answered 503 + Retry-After before its upload is read while its lane's
    queue (plain generation, or test-time search) is full, so that an overloaded server spends
    next to nothing on what it must refuse."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/generate":
            lane = scope["app"].state.model_service.lane(model_api.searching_query(scope["query_string"]))
            if lane.full:
                await errors.overloaded_response(lane.refusal())(scope, receive, send)
                return
        await self.app(scope, receive, send)


# room for the multipart framing around an upload of IMG2CQ_MAX_IMAGE_BYTES
MULTIPART_FRAMING = 64 * 2**10


class BoundedBody:
    """Request bodies are bounded before they are read (``IMG2CQ_MAX_BODY_BYTES``; for /generate,
    ``IMG2CQ_MAX_IMAGE_BYTES`` and its framing): a larger Content-Length is answered 413 at once,
    and a body without one (chunked) is counted as it arrives and cut off with 413 at the limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        limit = (settings.max_image_bytes + MULTIPART_FRAMING if scope["path"] == "/generate"
                 else settings.max_body_bytes)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await errors.too_large_response(limit)(scope, receive, send)
            return
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise errors.BodyTooLarge(limit)
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except errors.BodyTooLarge:  # raised where no handler answered it
            if started:
                raise
            await errors.too_large_response(limit)(scope, receive, send)


app = FastAPI(title="img2cq", summary="Image -> CadQuery code, and a project critical-path API",
              lifespan=lifespan, default_response_class=errors.SafeJSONResponse)
app.add_middleware(RefuseAtTheDoor)
app.add_middleware(BoundedBody)
errors.install(app)
scheduling.errors.install(app)
app.include_router(model_api.router)
app.include_router(page.router)
app.mount("/static", page.static_files(), name="static")


@app.get("/health", response_model=Health, tags=["service"])
async def health(request: Request) -> Health:
    """Up: answered from memory on the event loop, whatever the database, the model and the
    sandbox are doing (and with no database configured)."""
    return Health(status="ok", model_configured=request.app.state.model_dir is not None)
