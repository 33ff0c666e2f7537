"""The quart-trio application: page, JSON API, event stream and /metrics behind basic auth.

`create_app` builds everything from the core and the ``webManager`` settings without serving
it, so tests drive it with quart's test client; engarde.web.serve runs it under hypercorn.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from prometheus_client.exposition import choose_encoder
from quart import Response, jsonify, request
from quart.json.provider import DefaultJSONProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from engarde.config import WebManagerConfig
from engarde.web import api
from engarde.web.api import ApiError, allowed_hosts, local_address
from engarde.web.auth import CHALLENGE, credentials_ok
from engarde.web.guard import HostCheck, PacerPool
from engarde.web.live import Clock, Core, Dashboard, Reload
from engarde.web.metrics import make_registry
from engarde.web.pacing import Pacer

MAX_BODY_BYTES = 64 * 1024
EXTENSION_KEY = "engarde.dashboard"

_NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
}
_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    ),
}


class _JSONProvider(DefaultJSONProvider):
    sort_keys = False  # keep the documented field order (type, version, ... first)


class EngardeApp(QuartTrio):
    json_provider_class = _JSONProvider


def create_app(
    core: Core,
    config: WebManagerConfig | None,
    *,
    clock: Clock = time.monotonic,
    pacer: Pacer | PacerPool | None = None,
    reload: Reload | None = None,
    hosts: HostCheck | None = None,
) -> QuartTrio:
    """The dashboard app for a ClientCore or ServerCore (TypeError for anything else).

    ``config`` None means no authentication (as a webManager without username/password); a
    reload may change the credentials later (``dashboard.web``). ``pacer`` spreads requests out
    per client address (engarde.web.pacing, engarde.web.guard; a single Pacer: one budget for
    everyone, for tests); the default admits 20/s, bursts of 40 per address. ``reload``
    re-reads the config file (engarde.net.reload), for ``/api/v2/reload``; None: not offered.
    ``hosts``: the Host allow-list (default: from ``config.listenAddr``).
    """
    dashboard = Dashboard(core, clock=clock, web=config, reload=reload)
    app = EngardeApp(__name__, static_folder="static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = None  # revalidate: an upgrade shows at once
    app.extensions[EXTENSION_KEY] = dashboard
    registry = make_registry(dashboard)
    pace = pacer if pacer is not None else PacerPool()
    if hosts is None:
        hosts = HostCheck(_listen_host(config.listenAddr) if config is not None else "")

    @app.before_request
    async def check_then_pace() -> Response | None:
        """Host allow-list and authentication first (cheap), then pacing: a refused request
        draws from its address's budget for refused requests, never from the budget of
        requests that passed (engarde.web.guard)."""
        web = dashboard.web
        refusal: Response | None = None
        if not hosts.host_ok(request.headers.get("Host"), allowed_hosts(web), local_address()):
            refusal = jsonify({"error": "refused: this is not a host name of the dashboard"})
            refusal.status_code = 421
        elif (
            web is not None
            and web.auth_enabled
            and not credentials_ok(request.headers.get("Authorization"), web.username, web.password)
        ):
            refusal = jsonify({"error": "authentication required"})
            refusal.status_code = 401
            refusal.headers["WWW-Authenticate"] = CHALLENGE
        now = trio.current_time()
        if isinstance(pace, Pacer):
            wait = pace.reserve(now)
        else:
            wait = pace.reserve((request.remote_addr or "?", refusal is None), now)
        if wait is None:
            response = jsonify({"error": "too many requests, slow down"})
            response.status_code = 429
            response.headers["Retry-After"] = "1"
            return response
        if wait > 0:
            await trio.sleep(wait)
        return refusal

    @app.after_request
    async def add_headers(response: Response) -> Response:
        response.headers.update(_SECURITY)
        if request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-cache"  # ETag / Last-Modified: 304s
        else:
            response.headers.update(_NO_CACHE)
        return response

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        response = jsonify({"error": exc.message})
        response.status_code = exc.status
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        response = jsonify({"error": _describe(exc, code)})
        response.status_code = code
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.get("/")
    async def page() -> Response:
        return await app.send_static_file("index.html")

    @app.get("/metrics")
    async def metrics() -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry), status=200, content_type=content_type)

    api.register(app, dashboard, hosts)
    return app


def dashboard_of(app: QuartTrio) -> Dashboard:
    """The Dashboard behind an app made by create_app."""
    dashboard: Any = app.extensions[EXTENSION_KEY]
    if not isinstance(dashboard, Dashboard):
        raise TypeError("not an engarde dashboard app")
    return dashboard


def _listen_host(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return host if port.isdigit() else listen


def _describe(exc: HTTPException, code: int) -> str:
    if code == 404:
        return f"not found: {request.path}"
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return f"method {request.method} not allowed on {request.path} (allowed: {allowed})"
    if code == 413:
        return f"request body too large (at most {MAX_BODY_BYTES} bytes)"
    if code >= 500:
        return "internal error, see engarde's log"
    return exc.description or exc.name
