"""The scheduler served alone, with no model:

    uvicorn scheduling.main:app                 # docs at http://127.0.0.1:8000/docs

Settings come from the environment, read at start (``scheduling/settings.py``); the database is
migrated to the newest revision before the first request. Served alone it bounds no request body
itself: put it behind a proxy that does (the img2cq front door, ``server.py``, bounds them)."""

from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel

from scheduling import api, errors
from scheduling.database import Database
from scheduling.settings import SchedulingSettings


class Health(BaseModel):
    status: Literal["ok"]


@asynccontextmanager
async def lifespan(app: FastAPI):
    with Database.open(SchedulingSettings()) as app.state.scheduling:
        yield


app = FastAPI(title="scheduling", summary="A project critical-path API", lifespan=lifespan)
errors.install_generic(app)
errors.install(app)
app.include_router(api.router)


@app.get("/health", response_model=Health, tags=["service"])
async def health() -> Health:
    """Up: answered from memory, with no database round trip."""
    return Health(status="ok")
