"""Error responses: every bad request gets a 4xx whose ``detail`` says what to change."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

# What FastAPI says when the JSON decoder itself fails (bytes that are not UTF-8, nesting
# deeper than the decoder recurses, integers past Python's digit limit).
BODY_PARSE_FAILURE = "There was an error parsing the body"

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unprocessable(ApiError):
    """The request is well-formed but asks for something this server cannot do."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT


class TooManyPending(ApiError):
    """A caller has as many unfinished jobs as the server allows; retry once some end."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    retry_after_s = 30


def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _field(error: dict) -> str:
    return ".".join(str(part) for part in error["loc"] if part != "body") or "body"


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    content_type = request.headers.get("content-type", "")
    if any(e["loc"][:1] == ("body",) for e in errors) and request.method in ("POST", "PUT"):
        if "json" not in content_type and "multipart" not in content_type:
            return JSONResponse(
                {"detail": f"send the body as JSON with `Content-Type: application/json` "
                           f"(got {content_type or 'no content type'})"},
                status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            )
        malformed = [e for e in errors if e["type"] == "json_invalid"]
        if malformed:
            reason = malformed[0].get("ctx", {}).get("error", "")
            return JSONResponse(
                {"detail": f"the body is not valid JSON ({reason} at character "
                           f"{malformed[0]['loc'][-1]}); fix the syntax"},
                status_code=status.HTTP_400_BAD_REQUEST,
            )
    messages = [f"{_field(e)}: {e['msg']}" for e in errors]
    clean = [{"field": _field(e), "message": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": "; ".join(messages), "errors": clean},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _http_error(request: Request, exc: HTTPException):
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == BODY_PARSE_FAILURE:
        return JSONResponse(
            {"detail": "the body could not be read as JSON: send UTF-8 text with ordinary "
                       "nesting and numbers, e.g. {\"dataset\": \"perov_5\", \"target\": -0.3}"},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    return await http_exception_handler(request, exc)


def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse(
        {"detail": "the database is unavailable; retry in a moment (GET /health tells when "
                   "it is back)"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(InterfaceError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_down)
