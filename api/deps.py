"""Dependencies routes declare with ``Annotated`` aliases: settings, a session, the caller."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from xtaldiff.settings import Settings


# Dependencies that do no I/O are async: FastAPI would run plain functions in its threadpool.
async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def _bearer(authorization: str | None) -> str | None:
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    return None


def _digest(secret: str) -> bytes:
    # Comparing fixed-length digests leaks neither content nor length through timing.
    return hashlib.sha256(secret.encode()).digest()


async def get_owner(
    request: Request, settings: Annotated[Settings, Depends(app_settings)]
) -> str | None:
    """The caller's key (hashed) when API keys are on, else None (every job is visible)."""
    if not settings.api_keys:
        return None
    given = request.headers.get("x-api-key") or _bearer(request.headers.get("authorization"))
    if not given:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this server needs an API key: send `Authorization: Bearer <key>` or `X-API-Key`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = _digest(given)
    matches = [secrets.compare_digest(digest, _digest(key.get_secret_value()))
               for key in settings.api_keys]
    if not any(matches):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this API key is not accepted")
    return digest.hex()


async def get_client(request: Request, owner: Annotated[str | None, Depends(get_owner)]) -> str:
    """Who is asking, for the per-caller limit and the fair queue: the key when keys are on,
    else the address the request came from (behind a proxy, run uvicorn with
    --forwarded-allow-ips so that this is the caller's and not the proxy's)."""
    if owner is not None:
        return owner
    return f"ip:{request.client.host if request.client else 'unknown'}"


def admin_refusal(settings: Settings, authorization: str | None) -> HTTPException | None:
    """Why a request with this Authorization header may not use /admin (None: it may)."""
    if settings.admin_token is None:
        return HTTPException(
            status.HTTP_403_FORBIDDEN,
            "the admin API is off on this server: set XTALDIFF_ADMIN_TOKEN to turn it on",
        )
    given = _bearer(authorization)
    if given is None:
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "admin routes need `Authorization: Bearer <admin token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(_digest(given), _digest(settings.admin_token.get_secret_value())):
        return HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")
    return None


async def require_admin(
    request: Request, settings: Annotated[Settings, Depends(app_settings)]
) -> None:
    refusal = admin_refusal(settings, request.headers.get("authorization"))
    if refusal is not None:
        raise refusal


SettingsDep = Annotated[Settings, Depends(app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
ClientDep = Annotated[str, Depends(get_client)]
AdminDep = Depends(require_admin)
