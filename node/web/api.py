"""The node's web application: JSON API, live updates (SSE), /health, /metrics and the pages.

`make_web_app(provider, role="beacon"|"peer")` returns an aiohttp Application; the node adds
its own /p2p websocket route to the same app before starting it. The web layer validates
every parameter itself (a bad one is a 400 JSON error, never a 500) and hands the provider
only normalized values (see node/web/provider.py). Provider methods may be plain or async.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from chain.constants import MAX_RECORD_BYTES
from node.web import metrics as prom
from node.web.pages import add_page_routes
from node.web.provider import PEER_STATUSES, BadRequest, Metric, NotFound

log = logging.getLogger(__name__)

Role = Literal["beacon", "peer"]

MAX_LIMIT = 100
DEFAULT_BLOCKS_LIMIT = 20
DEFAULT_PEERS_LIMIT = 50
MAX_OFFSET = 10**9
MAX_QUERY_CHARS = 256
MAX_NAME_BYTES = 255
# A signed record is at most MAX_RECORD_BYTES of payload plus its envelope.
MAX_RECORD_POST_BYTES = MAX_RECORD_BYTES + 4096
LIVE_RECHECK_S = 2.0        # SSE re-reads status this often even without a notification
LIVE_KEEPALIVE_S = 15.0
HEALTH_CODES = {"ready": 200, "syncing": 206, "not_ready": 503}

_HEIGHT_RE = re.compile(r"^[0-9]{1,19}$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX40_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class LiveHub:
    """State of the /api/live streams of one app."""
    stopping: bool = False
    clients: int = 0
    streams: set[web.StreamResponse] = field(default_factory=set)


@dataclass
class WebContext:
    provider: Any
    role: Role
    live: LiveHub | None = None


WEB_KEY = web.AppKey("cairn.web", WebContext)


# ---------------------------------------------------------------------------- helpers

def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":")), status=status,
                        content_type="application/json", headers={"Cache-Control": "no-store"})


def json_error(status: int, error: str, detail: str) -> web.Response:
    return json_response({"error": error, "detail": detail}, status=status)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _ctx(request: web.Request) -> WebContext:
    return request.app[WEB_KEY]


def parse_int(query: Any, name: str, *, default: int | None, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not _HEIGHT_RE.match(raw) or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    return int(raw)


def parse_block_ref(ref: str) -> str:
    if _HEIGHT_RE.match(ref):
        return str(int(ref))
    if _HEX64_RE.match(ref):
        return ref.lower()
    raise BadRequest(f"block ref must be a height (decimal) or a 64-hex block hash, got {ref[:80]!r}")


def parse_peer_id(ref: str) -> str:
    if _HEX64_RE.match(ref):
        return ref.lower()
    raise BadRequest(f"peer id must be 64 hex characters (the peer's public key), got {ref[:80]!r}")


def parse_collection_ref(ref: str) -> str:
    if _HEX64_RE.match(ref) or _HEX40_RE.match(ref):
        return ref.lower()
    if not ref or len(ref.encode("utf-8")) > MAX_NAME_BYTES or _CONTROL_RE.search(ref):
        raise BadRequest("collection ref must be a collection name (1..255 bytes, no control "
                         "characters) or an info hash (64 or 40 hex characters)")
    return ref


def match_url(kind: str, ref: str) -> str:
    return f"/#/{kind}/{ref}"


# ---------------------------------------------------------------------------- middleware

@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFound as e:
        return json_error(404, "not found", e.what)
    except BadRequest as e:
        return json_error(400, "bad request", e.msg)
    except web.HTTPException as e:
        if e.status < 400 or e.status == 101:
            raise
        detail = {404: f"no such endpoint: {request.method} {request.path}",
                  405: f"method {request.method} not allowed on {request.path}",
                  413: f"request body too large (limit {MAX_RECORD_POST_BYTES} bytes)"}.get(
                      e.status, e.text or e.reason)
        resp = json_error(e.status, e.reason.lower(), detail)
        for h in ("Allow",):
            if h in e.headers:
                resp.headers[h] = e.headers[h]
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("web handler failed: %s %s", request.method, request.path_qs)
        return json_error(500, "internal error", "the node failed to answer; see its log")


# ---------------------------------------------------------------------------- shared handlers

async def get_status(request: web.Request) -> web.Response:
    return json_response(await _call(_ctx(request).provider.status))


async def get_health(request: web.Request) -> web.Response:
    h = await _call(_ctx(request).provider.health)
    if h not in HEALTH_CODES:
        log.error("provider health() returned %r", h)
        h = "not_ready"
    return json_response({"status": h}, status=HEALTH_CODES[h])


async def get_metrics(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    st = await _call(ctx.provider.status)
    derived = prom.beacon_metrics(st) if ctx.role == "beacon" else prom.peer_metrics(st)
    extra = await _call(ctx.provider.metrics)
    web_m = [Metric("cairn_web_live_clients", "gauge", "Open /api/live streams.",
                    ctx.live.clients if ctx.live else 0)]
    body = prom.render(prom.merge(derived, web_m, extra))
    return web.Response(body=body.encode(), headers={"Content-Type": prom.CONTENT_TYPE})


async def get_live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one `status` event with the status JSON per change."""
    ctx = _ctx(request)
    hub = ctx.live
    if hub is None or hub.stopping:
        raise web.HTTPServiceUnavailable(text="shutting down")
    cond: asyncio.Condition = ctx.provider.head_changed
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    hub.clients += 1
    hub.streams.add(resp)
    last_body = None
    last_write = time.monotonic()
    try:
        await resp.write(b"retry: 2000\n\n")
        while not hub.stopping:
            body = json.dumps(await _call(ctx.provider.status), separators=(",", ":"))
            now = time.monotonic()
            if body != last_body:
                await resp.write(f"event: status\ndata: {body}\n\n".encode())
                last_body, last_write = body, now
            elif now - last_write >= LIVE_KEEPALIVE_S:
                await resp.write(b": keepalive\n\n")
                last_write = now
            try:
                async with cond:
                    await asyncio.wait_for(cond.wait(), LIVE_RECHECK_S)
            except TimeoutError:
                pass
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        hub.clients -= 1
        hub.streams.discard(resp)
    return resp


# ---------------------------------------------------------------------------- explorer handlers

async def get_blocks(request: web.Request) -> web.Response:
    q = request.query
    before = parse_int(q, "before", default=None, lo=0, hi=2**63 - 1)
    limit = parse_int(q, "limit", default=DEFAULT_BLOCKS_LIMIT, lo=1, hi=MAX_LIMIT)
    return json_response(await _call(_ctx(request).provider.blocks, before, limit))


async def get_block(request: web.Request) -> web.Response:
    ref = parse_block_ref(request.match_info["ref"])
    return json_response(await _call(_ctx(request).provider.block, ref))


async def get_validators(request: web.Request) -> web.Response:
    return json_response({"validators": await _call(_ctx(request).provider.validators)})


async def get_peers(request: web.Request) -> web.Response:
    q = request.query
    status = q.get("status") or None
    if status is not None and status not in PEER_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(PEER_STATUSES)}, got {status[:40]!r}")
    offset = parse_int(q, "offset", default=0, lo=0, hi=MAX_OFFSET)
    limit = parse_int(q, "limit", default=DEFAULT_PEERS_LIMIT, lo=1, hi=MAX_LIMIT)
    return json_response(await _call(_ctx(request).provider.peers, status, offset, limit))


async def get_peer(request: web.Request) -> web.Response:
    pid = parse_peer_id(request.match_info["id"])
    return json_response(await _call(_ctx(request).provider.peer, pid))


async def get_collections(request: web.Request) -> web.Response:
    return json_response({"collections": await _call(_ctx(request).provider.collections)})


async def get_collection(request: web.Request) -> web.Response:
    ref = parse_collection_ref(request.match_info["ref"])
    return json_response(await _call(_ctx(request).provider.collection, ref))


async def get_search(request: web.Request) -> web.Response:
    q = (request.query.get("q") or "").strip()
    if not q:
        raise BadRequest("q is required: a height, block hash, peer id, collection name or info hash")
    if len(q) > MAX_QUERY_CHARS or _CONTROL_RE.search(q):
        raise BadRequest(f"q must be at most {MAX_QUERY_CHARS} printable characters")
    res = await _call(_ctx(request).provider.search, q)
    matches = []
    for m in res.get("matches", []):
        m = dict(m)
        if "url" not in m:
            m["url"] = match_url(m["kind"], str(m["ref"]))
        matches.append(m)
    return json_response({"query": q, "matches": matches})


async def get_charts(request: web.Request) -> web.Response:
    return json_response(await _call(_ctx(request).provider.charts))


async def post_record(request: web.Request) -> web.Response:
    ctype = request.content_type
    if request.can_read_body and ctype not in ("application/octet-stream", "application/x-cairn-record"):
        raise web.HTTPUnsupportedMediaType(
            text="send the canonical bytes of a SignedRecord as application/octet-stream")
    data = await request.read()
    if not data:
        raise BadRequest("empty body: send the canonical bytes of a SignedRecord")
    res = await _call(_ctx(request).provider.submit_record, data)
    return json_response(res, status=202 if res.get("accepted") else 200)


# ---------------------------------------------------------------------------- the app

async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    app[WEB_KEY].live = LiveHub()
    yield
    app[WEB_KEY].live = None


async def _stop_live(app: web.Application) -> None:
    """on_shutdown: end every SSE stream so the server can close promptly."""
    ctx = app[WEB_KEY]
    if ctx.live is None:
        return
    ctx.live.stopping = True
    cond: asyncio.Condition = ctx.provider.head_changed
    async with cond:
        cond.notify_all()


def make_web_app(provider: Any, *, role: Role) -> web.Application:
    """The node's aiohttp app: `/` explorer (beacon) or dashboard (peer), /static/, /api/...,
    /api/live, /health, /metrics. `provider` is an ExplorerProvider (role "beacon") or a
    DashboardProvider (role "peer"). The caller may add routes (e.g. /p2p) before starting it."""
    if role not in ("beacon", "peer"):
        raise ValueError(f"role must be 'beacon' or 'peer', not {role!r}")
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_RECORD_POST_BYTES)
    app[WEB_KEY] = WebContext(provider=provider, role=role)
    app.cleanup_ctx.append(_live_ctx)
    app.on_shutdown.append(_stop_live)
    r = app.router
    r.add_get("/api/status", get_status)
    r.add_get("/api/live", get_live)
    r.add_get("/health", get_health)
    r.add_get("/metrics", get_metrics)
    if role == "beacon":
        r.add_get("/api/blocks", get_blocks)
        r.add_get("/api/blocks/{ref}", get_block)
        r.add_get("/api/validators", get_validators)
        r.add_get("/api/peers", get_peers)
        r.add_get("/api/peers/{id}", get_peer)
        r.add_get("/api/collections", get_collections)
        r.add_get(r"/api/collections/{ref:[\s\S]+}", get_collection)
        r.add_get("/api/search", get_search)
        r.add_get("/api/charts", get_charts)
        r.add_post("/api/records", post_record)
    add_page_routes(app, role)
    return app
