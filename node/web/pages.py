"""The pages: `/` serves the explorer (beacon) or the dashboard (peer); /static/ the JS and CSS.

No build step: plain HTML shells and JS modules that fetch the JSON API. Charts are drawn
by static/charts.js as inline SVG; nothing is fetched from outside the node.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"beacon": "index.html", "peer": "dashboard.html"}


def _page_handler(filename: str):
    path = STATIC_DIR / filename

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache",
                                               "Content-Type": "text/html; charset=utf-8"})
    return handler


def add_page_routes(app: web.Application, role: str) -> None:
    page = _page_handler(PAGES[role])
    app.router.add_get("/", page)
    app.router.add_get("/index.html", page)
    app.router.add_static("/static/", STATIC_DIR, show_index=False, append_version=False)
