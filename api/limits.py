"""Upload size limit, enforced while the body streams in (before multipart parsing ends)."""

from __future__ import annotations

import json

from fastapi import HTTPException, status


class BodySizeLimit:
    """Refuse POST bodies to ``path_prefix`` larger than ``max_bytes`` with 413."""

    def __init__(self, app, *, path_prefix: str, max_bytes: int) -> None:
        self.app = app
        self.path_prefix = path_prefix
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.path_prefix):
            await self.app(scope, receive, send)
            return
        message = (f"upload larger than this server's limit of {self.max_bytes} bytes; "
                   "raise XTALDIFF_MAX_UPLOAD_BYTES or send a smaller file")
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


async def _reply_413(send, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
