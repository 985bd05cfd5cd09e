"""Error handlers of the model service: one clear JSON message per failure, never a bare 500."""

import json
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from img2cq.serving.batching import DeadlineExceeded, Disconnected, Overloaded
from img2cq.serving.model_api import ModelUnavailable


def encodable(value):
    """``value`` with every string made encodable as UTF-8: what cannot be (a lone surrogate, as a
    program's error message may carry) is written as its escape, e.g. ``\\ud800``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """Every answer's JSON (the app's default response class): always valid UTF-8."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(encodable(content))


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


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


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe to render whatever input it echoes (NaN, Infinity, lone surrogates)."""
    return _AsciiJSONResponse({"detail": _printable(jsonable_encoder(exc.errors()))}, status_code=422)


def _http_error(_request: Request, exc: HTTPException) -> Response:
    """FastAPI's own answer to an HTTPException, in valid UTF-8 whatever its detail carries."""
    if exc.status_code < 200 or exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def too_large_response(limit: int) -> JSONResponse:
    return _http_error(None, BodyTooLarge(limit))


def overloaded_response(exc: Overloaded) -> JSONResponse:
    return SafeJSONResponse({"detail": f"{exc}; retry after {exc.retry_after} s"}, status_code=503,
                        headers={"Retry-After": str(exc.retry_after)})


def _overloaded(_request: Request, exc: Overloaded) -> JSONResponse:
    return overloaded_response(exc)


def _deadline(_request: Request, exc: DeadlineExceeded) -> JSONResponse:
    return SafeJSONResponse({"detail": f"{exc}: the server is busy, retry later "
                                       "(IMG2CQ_REQUEST_TIMEOUT sets the limit)"}, status_code=504)


def _disconnected(_request: Request, _exc: Disconnected) -> Response:
    """Nobody reads this answer; 499 (client closed request) marks it in the access log."""
    return Response(status_code=499)


def _unavailable(_request: Request, exc: ModelUnavailable) -> JSONResponse:
    return SafeJSONResponse({"detail": str(exc)}, status_code=503)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(DeadlineExceeded, _deadline)
    app.add_exception_handler(Disconnected, _disconnected)
    app.add_exception_handler(ModelUnavailable, _unavailable)
