"""The API docs page (`/docs`, Swagger UI) served from installed files: it works offline, with no CDN.

FastAPI's default `/docs` loads Swagger UI from a CDN, so offline it is blank. The `fastapi-offline`
package (MIT; a dependency of the ``serve`` extra) ships Swagger UI's distribution files (swagger-ui-dist,
Apache-2.0), and this module serves them under ``/docs/`` and builds the page with FastAPI's
`get_swagger_ui_html` pointed at them. The page's Content-Security-Policy lets only those files and its one
inline script (by hash) run, and lets no other site frame it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from tinyroberta_es.errors import UserError

ASSETS = {  # URL name under /docs/ -> (file in fastapi_offline/static, media type)
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui.css", "text/css"),
    "favicon.png": ("favicon.png", "image/png"),
}


def inline_hashes(html: str, tag: str) -> str:
    """CSP sources (``'sha256-...'``) for the inline ``<tag>`` blocks of `html`, space-separated."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'" for block in blocks
    )


def add_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI for `app`'s OpenAPI schema at `path`, its files under ``path/``."""
    try:
        static = resources.files("fastapi_offline").joinpath("static")
    except ModuleNotFoundError:
        raise UserError(
            "the API docs need the fastapi-offline package: pip install 'tinyroberta-es[serve]'"
        ) from None
    assets = {name: (static.joinpath(file).read_bytes(), media) for name, (file, media) in ASSETS.items()}
    html = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API",
        swagger_js_url=f"{path}/swagger-ui-bundle.js",
        swagger_css_url=f"{path}/swagger-ui.css",
        swagger_favicon_url=f"{path}/favicon.png",
    ).body.decode()
    csp = (
        f"default-src 'none'; script-src 'self' {inline_hashes(html, 'script')}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )

    @app.get(path, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get(path + "/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404)
        body, media = assets[name]
        return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=86400"})
