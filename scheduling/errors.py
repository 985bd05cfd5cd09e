"""The scheduler's failures and their HTTP answers: one clear JSON message each, never a bare 500.

``crud`` raises ``NotFound`` (404), ``InvalidField`` (422, shaped like FastAPI's own field errors)
and ``Conflict`` (409: a duplicate link, or one that would close a cycle); the database's own
refusals map the same way: ``IntegrityError`` (a concurrent request won a race on a constraint)
409, ``OperationalError`` and the pool's timeout 503 + Retry-After; the wait for a connection
answers ``DatabaseBusy`` (503 + Retry-After) and ``DatabaseTimeout`` (504). ``install`` adds these
handlers to an app; ``install_generic`` adds, for the scheduler served alone, the answers a host
app otherwise gives (validation errors whatever the input, every HTTPException as JSON)."""

import json
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from scheduling.cpm import CycleError


class NotFound(Exception):
    """A project, task or link named in the path does not exist (there)."""


class Conflict(Exception):
    """The request contradicts the stored data: a duplicate link, or one that closes a cycle."""


class InvalidField(Exception):
    """A body field that only the database can check is invalid (a task of another project)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class DatabaseBusy(Exception):
    """Too many requests already wait for a connection; ``retry_after`` estimates, in whole
    seconds, when the queue drains."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseTimeout(Exception):
    """No connection freed within the wait's limit."""


def _json(content, status_code: int, headers: dict | None = None) -> Response:
    """JSON with every non-ASCII character escaped: valid UTF-8 whatever text a message carries."""
    return Response(json.dumps(content, ensure_ascii=True), status_code=status_code, headers=headers,
                    media_type="application/json")


def _not_found(_request: Request, exc: NotFound) -> Response:
    return _json({"detail": str(exc)}, 404)


def _conflict(_request: Request, exc: Conflict | CycleError) -> Response:
    return _json({"detail": str(exc)}, 409)


def _invalid_field(_request: Request, exc: InvalidField) -> Response:
    return _json({"detail": [{"type": "value_error", "loc": ["body", exc.field], "msg": str(exc), "input": None}]},
                 422)


def _integrity_error(_request: Request, exc: IntegrityError) -> Response:
    """A concurrent request won a race on a constraint (duplicate link, deleted task)."""
    return _json({"detail": f"conflicts with stored data: {exc.orig}"}, 409)


def _database_unavailable(_request: Request, exc: OperationalError | PoolTimeout) -> Response:
    reason = exc.orig if isinstance(exc, OperationalError) else exc
    return _json({"detail": f"database unavailable, retry: {reason}"}, 503, {"Retry-After": "1"})


def _busy(_request: Request, exc: DatabaseBusy) -> Response:
    return _json({"detail": f"{exc}; retry after {exc.retry_after} s"}, 503, {"Retry-After": str(exc.retry_after)})


def _timeout(_request: Request, exc: DatabaseTimeout) -> Response:
    return _json({"detail": f"{exc}: the database is busy, retry later (SCHEDULING_DB_WAIT_TIMEOUT sets the "
                            "limit)"}, 504)


def install(app: FastAPI) -> None:
    """The scheduler's own failures, answered on ``app``."""
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(CycleError, _conflict)
    app.add_exception_handler(InvalidField, _invalid_field)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(DatabaseBusy, _busy)
    app.add_exception_handler(DatabaseTimeout, _timeout)


def _printable(value):
    """Non-finite floats as strings ("nan", "inf"): JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, rendered whatever input it echoes (NaN, Infinity, lone surrogates: every
    non-ASCII character escaped)."""
    return _json({"detail": _printable(jsonable_encoder(exc.errors()))}, 422)


def _http_error(_request: Request, exc: HTTPException) -> Response:
    if exc.status_code < 200 or exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return _json({"detail": exc.detail}, exc.status_code, exc.headers)


def install_generic(app: FastAPI) -> None:
    """For the scheduler served alone: the answers a host app's own handlers otherwise give."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
