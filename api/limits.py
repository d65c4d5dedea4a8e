"""Body size limits, enforced while the body streams in, and admin authentication before any
of an upload is read."""

from __future__ import annotations

import json

from fastapi import HTTPException, status

from api.deps import admin_refusal

DESIGN_BODY_BYTES = 64 * 1024  # a design request is a few hundred bytes, 118 elements included


class BodySizeLimit:
    """Refuse bodies to ``path_prefix`` larger than ``max_bytes`` with 413 and ``message``."""

    def __init__(self, app, *, path_prefix: str, max_bytes: int, message: str) -> None:
        self.app = app
        self.path_prefix = path_prefix
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.path_prefix):
            await self.app(scope, receive, send)
            return
        message = self.message
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reply_413(send, message)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                # FastAPI re-raises HTTPExceptions from body parsing as they are.
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, message)
            return event

        await self.app(scope, limited_receive, send)


class AdminFirst:
    """Check the admin token from the headers before any of an /admin body is read: an
    unauthenticated upload is refused without the server taking it in."""

    def __init__(self, app, *, settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/admin"):
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            refusal = admin_refusal(self.settings, authorization)
            if refusal is not None:
                await _reply(send, refusal.status_code, refusal.detail, refusal.headers or {})
                return
        await self.app(scope, receive, send)


async def _reply_413(send, message: str) -> None:
    await _reply(send, 413, message, {})


async def _reply(send, status_code: int, message: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status_code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *((k.lower().encode(), v.encode()) for k, v in headers.items())]})
    await send({"type": "http.response.body", "body": body})
