"""The web page at ``/``: plain HTML, JS and CSS from ``api/static`` (3Dmol.js vendored there)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Everything the page loads comes from this server: the browser refuses any other origin, so
# no request about a user's designs leaves the machine. Inline styles are allowed because
# 3Dmol.js sizes its canvas with a style attribute.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html",
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
