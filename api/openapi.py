"""The OpenAPI document with this server's caps on a design request as JSON-schema maximums,
so that a client generated from it refuses what the server would refuse."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from xtaldiff.settings import Settings


def _cap(field: dict, maximum: float) -> None:
    """Set `maximum` on the numeric branch of a field (optional fields are anyOf [number, null])."""
    for branch in field.get("anyOf", [field]):
        if branch.get("type") in ("integer", "number"):
            branch["maximum"] = maximum


def openapi_with_limits(app: FastAPI, settings: Settings) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        fields = schema["components"]["schemas"]["DesignRequest"]["properties"]
        _cap(fields["num_samples"], settings.max_num_samples)
        _cap(fields["steps"], settings.max_steps)
        _cap(fields["guidance"], settings.max_guidance)
        request = schema["components"]["schemas"]["DesignRequest"]
        request["description"] = (f"{request.get('description', '')} At most {settings.max_structure_steps} "
                                  "structure-steps (num_samples x steps) per request.").strip()
        app.openapi_schema = schema
    return app.openapi_schema
