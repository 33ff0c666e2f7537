"""The JSON API (v1: the Go original's, v2: richer status, history and live events).

Every answer is JSON, errors included: ``{"error": "..."}`` with a 4xx status for anything a
caller got wrong (bad JSON, a missing or unknown interface, a command on the server role). The
handlers only call `Dashboard` (engarde.web.live), which reads the core's snapshot and calls its
exclusion commands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from quart import Response, jsonify, request
from quart_trio import QuartTrio

from engarde.config import WebManagerConfig
from engarde.core.client import UnknownInterface
from engarde.web.guard import HostCheck
from engarde.web.live import MAX_STREAMS, MAX_STREAMS_PER_ADDRESS, Dashboard, RoleError

logger = logging.getLogger(__name__)

BODY_HELP = 'expected a JSON body like {"interface": "eth1"}'


class ApiError(Exception):
    """Answered as ``{"error": message}`` with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def register(app: QuartTrio, dashboard: Dashboard, hosts: HostCheck) -> None:
    """Add the API routes to ``app``; ``hosts`` judges where commands come from."""

    def _refuse_cross_site() -> None:
        headers = request.headers
        if hosts.cross_site(
            headers.get("Origin"),
            headers.get("Sec-Fetch-Site"),
            allowed_hosts(dashboard.web),
            local_address(),
        ):
            raise ApiError(403, "refused: the request comes from a page of another site")

    @app.get("/api/v1/get-list")
    async def get_list() -> Response:
        return jsonify(dashboard.get_list())

    @app.post("/api/v1/swap-exclusion")
    async def swap_exclusion() -> Response:
        return await _command("swap-exclusion", dashboard.swap_exclusion)

    @app.post("/api/v1/exclude")
    async def exclude() -> Response:
        return await _command("exclude", dashboard.exclude)

    @app.post("/api/v1/include")
    async def include() -> Response:
        return await _command("include", dashboard.include)

    @app.route("/api/v1/reset-exclusions", methods=["GET", "POST"])
    async def reset_exclusions() -> Response:
        _refuse_cross_site()
        answer = _run(dashboard.reset_exclusions)
        logger.info("web: reset-exclusions from %s -> %s", _peer(), answer)
        return jsonify({"status": answer})

    @app.get("/api/v2/status")
    async def status() -> Response:
        return jsonify(dashboard.status())

    @app.get("/api/v2/reload")
    async def reload_preview() -> Response:
        """What a reload would change (the file as it is now against the running config)."""
        return await _reload(dry_run=True)

    @app.post("/api/v2/reload")
    async def reload() -> Response:
        _refuse_cross_site()
        answer = await _reload(dry_run=False)
        logger.info("web: reload from %s -> %s", _peer(), answer.status_code)
        return answer

    async def _reload(dry_run: bool) -> Response:
        if dashboard.reload is None:
            raise ApiError(404, "reload is not available here")
        outcome = await dashboard.reload(dry_run)
        doc = outcome.as_json()
        response = jsonify(doc)
        if not outcome.ok:
            doc["error"] = "the config file has problems; the running config stays"
            response = jsonify(doc)
            response.status_code = 422
        return response

    @app.get("/api/v2/history")
    async def history() -> Response:
        return jsonify(dashboard.history.as_json(dashboard.period_s))

    @app.get("/api/v2/events")
    async def events() -> Response:
        if dashboard.open_streams >= MAX_STREAMS:
            raise ApiError(503, f"too many open event streams (at most {MAX_STREAMS})")
        peer = _peer()
        if dashboard.streams_by_address.get(peer, 0) >= MAX_STREAMS_PER_ADDRESS:
            raise ApiError(
                503,
                f"too many open event streams from {peer} (at most {MAX_STREAMS_PER_ADDRESS})",
            )
        response = Response(
            _stream(dashboard, peer),
            status=200,
            content_type="text/event-stream; charset=utf-8",
            headers={"X-Accel-Buffering": "no"},
        )
        response.timeout = None  # a stream lasts as long as the page is open
        return response

    async def _command(name: str, action: Callable[[str], str]) -> Response:
        _refuse_cross_site()
        interface = await _interface_from_body()
        answer = _run(lambda: action(interface))
        logger.info("web: %s %s from %s -> %s", name, interface, _peer(), answer)
        return jsonify({"status": answer})


def _run(action: Callable[[], str]) -> str:
    try:
        answer = action()
    except UnknownInterface as exc:
        raise ApiError(400, f"unknown interface {exc.args[0]!r}") from None
    except RoleError as exc:
        raise ApiError(404, f"{exc}: this is the server") from None
    return answer


async def _interface_from_body() -> str:
    raw = await request.get_data(as_text=False)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, f"the request body is not valid JSON; {BODY_HELP}") from None
    except RecursionError:  # "[[[[...": nested deeper than the decoder goes
        raise ApiError(400, f"the request body is nested too deeply; {BODY_HELP}") from None
    if not isinstance(body, dict):
        raise ApiError(400, BODY_HELP)
    if "interface" not in body:
        raise ApiError(400, f"missing field 'interface'; {BODY_HELP}")
    name = body["interface"]
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"'interface' must be a non-empty string; {BODY_HELP}")
    return name


def allowed_hosts(web: WebManagerConfig | None) -> list[str]:
    """webManager.allowedHosts in force (a reload may change it)."""
    return web.allowedHosts if web is not None else []


def local_address() -> str | None:
    """The address of this machine the current request's connection came in on."""
    server = request.scope.get("server")
    if not server or not isinstance(server[0], str):
        return None
    return str(server[0]).lower()


def _peer() -> str:
    return request.remote_addr or "?"


async def _stream(dashboard: Dashboard, peer: str) -> AsyncIterator[bytes]:
    """One page's event stream: the full picture first, then each newer update; ends when the
    dashboard shuts down (so the server can stop without waiting for the page)."""
    dashboard.open_streams += 1
    by_address = dashboard.streams_by_address
    by_address[peer] = by_address.get(peer, 0) + 1
    try:
        yield dashboard.first_event().encode()
        seen = dashboard.broadcast.seq
        while True:
            update = await dashboard.broadcast.next(seen)
            if update is None:
                return
            seen, message = update
            yield message.encode()
    finally:
        dashboard.open_streams -= 1
        left = by_address.get(peer, 1) - 1
        if left > 0:
            by_address[peer] = left
        else:
            by_address.pop(peer, None)
