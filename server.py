"""img2cq over HTTP: the project critical-path API on a database, and the model and metrics.

    uvicorn server:app                      # docs at http://127.0.0.1:8000/docs

Settings come from the environment, read at start (img2cq/serving/settings.py lists them all).
Routes are thin: scheduling is img2cq.serving.schedule_api over img2cq.cpm and img2cq.db; the model
and metrics are img2cq.serving.model_api, batched by img2cq.serving.batching; programs run only in
the sandbox (img2cq.executor), never in this process.
"""

from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import select

from img2cq import db
from img2cq.serving import errors, model_api, schedule_api
from img2cq.serving.batching import Lane
from img2cq.serving.schedule_api import SessionDep
from img2cq.serving.settings import Settings


class Health(BaseModel):
    status: Literal["ok"]
    model_configured: bool


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Read the settings; create the schema, one sandbox and the batchers for the app's lifetime."""
    from img2cq.executor import Executor
    from img2cq.search import PRELOAD  # workers ready to render: /generate's search compares renders

    settings = app.state.settings = Settings()
    app.state.engine = db.make_engine(settings.sqlalchemy_url())
    db.create_schema(app.state.engine)
    app.state.executor = Executor(workers=settings.exec_workers, timeout=settings.exec_timeout,
                                  memory_mb=settings.exec_memory_mb, preload=PRELOAD, nice=settings.background_nice)
    app.state.sandbox = Lane(workers=settings.exec_workers, max_queue=settings.queue_size, name="sandbox")
    app.state.model_dir = settings.model
    app.state.model_service = model_api.ModelService(
        settings.model, torch_threads=settings.torch_threads, max_batch=settings.batch_size,
        max_wait_s=settings.batch_wait_ms / 1000, max_queue=settings.queue_size, executor=app.state.executor,
        search_train_json=settings.search_train_json, nice=settings.background_nice)
    app.state.model_service.start()
    try:
        yield
    finally:
        await app.state.model_service.stop()
        app.state.sandbox.close()
        app.state.executor.close()
        app.state.engine.dispose()


class RefuseAtTheDoor:
    """POST /generate is answered 503 + Retry-After before its upload is read while the model's
    queue is full, so that an overloaded server spends next to nothing on what it must refuse."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/generate":
            batcher = scope["app"].state.model_service.batcher
            if batcher.full:
                await errors.overloaded_response(batcher.refusal())(scope, receive, send)
                return
        await self.app(scope, receive, send)


app = FastAPI(title="img2cq", summary="Image -> CadQuery code, and a project critical-path API",
              lifespan=lifespan)
app.add_middleware(RefuseAtTheDoor)
errors.install(app)
app.include_router(schedule_api.router)
app.include_router(model_api.router)


@app.get("/health", response_model=Health, tags=["service"])
def health(request: Request, session: SessionDep) -> Health:
    """Up, and the database answers."""
    session.execute(select(1))
    return Health(status="ok", model_configured=request.app.state.model_dir is not None)
