"""Every error the server answers is OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.

    400 invalid_request_error   bad JSON, wrong types (param names the field), unsupported features, too long
    401 authentication_error    missing or wrong API key
    404 not_found_error         unknown model or route
    413 invalid_request_error   body over the limit
    429 rate_limit_error        with Retry-After
    503 server_error            overloaded, shutting down, timed out, a missing extra
    500 server_error            a bug: logged with its traceback, answered without internals

Library errors (LlmkitError and its subclasses, UnsupportedFeature among them) carry their own `http_status`
and `type`; the handlers here only translate.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from llmkit.errors import LlmkitError

log = logging.getLogger("llmkit.serve")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    """An error with an HTTP status, raised by the serving layer and answered in OpenAI's envelope."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_library(e: LlmkitError) -> APIError:
    code = {"UnsupportedFeature": "unsupported_feature", "ModelNotFound": "model_not_found"}.get(type(e).__name__)
    return APIError(e.http_status, str(e), code=code, type=e.type)


def bug() -> APIError:
    """A 500: the server's fault. The traceback goes to the log, never to the client."""
    return APIError(500, "internal server error (logged on the server)", code="internal_error")


def overloaded(message: str, retry_after: int = 1) -> APIError:
    return APIError(503, message, code="overloaded", headers={"Retry-After": str(retry_after)})


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def param_path(loc: tuple) -> str | None:
    """pydantic's loc ('body', 'messages', 0, 'role') as OpenAI writes it: 'messages[0].role'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isidentifier() or part in _TYPE_TAGS or part[0].isupper():
            continue  # pydantic names the union member it tried ('list[str]'); the field is what the client needs
        else:
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation errors as one 400: every bad field named, `param` the first of them."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first["type"] == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return APIError(400, f"the body is not valid JSON{f': {detail}' if detail else ''}", code="invalid_json")
    if tuple(first["loc"]) == ("body",):  # empty, or not an object (a list, a string, no JSON content type)
        if first["type"] == "missing":
            return APIError(400, "the body is empty; expected a JSON object", code="invalid_json")
        hint = " sent with 'Content-Type: application/json'" if isinstance(first.get("input"), bytes) else ""
        return APIError(400, f"the body must be a JSON object{hint}", code="invalid_json")
    # a union field ('stop': str | list[str]) fails once per alternative: one line per field, alternatives or-ed
    fields: dict[str | None, list[dict]] = {}
    for err in errors:
        fields.setdefault(param_path(tuple(err["loc"])), []).append(err)
    parts = []
    for param, errs in fields.items():
        said = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errs))
        given = errs[0].get("input")
        shown = f" (got {json.dumps(given, default=str)[:80]})" if errs[0]["type"] != "missing" else ""
        parts.append(f"'{param}': {said}{shown}")
    param = next(iter(fields))
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return APIError(400, "; ".join(parts), param=param, code=code)


def install(app: FastAPI) -> None:
    """Register the handlers that turn library and HTTP errors into the envelope (bugs: `app.Gate`)."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(LlmkitError)
    async def _library(request: Request, exc: LlmkitError) -> JSONResponse:
        return from_library(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message, code = f"no route {request.method} {request.url.path}", "not_found"
        elif exc.status_code == 405:
            message, code = f"method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()
