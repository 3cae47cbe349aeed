"""The server route behind ComfyUI's "RunComfy > API token" setting.

GET    /runcomfy/seedream/token  -> whether a token is configured, and from where (never the token)
POST   /runcomfy/seedream/token  {"token": "..."} -> checked against RunComfy, then stored owner-only
DELETE /runcomfy/seedream/token  -> forget the stored token (environment variables keep working)

Only same-origin JSON requests are accepted, and bodies are capped, so another web
page open in the browser cannot set or probe the token. Requests are answered only when
the browser reached this ComfyUI under a name it can be reached under: localhost (and
*.localhost), an IP address, or a name listed in RUNCOMFY_SEEDREAM_ALLOWED_HOSTS. A
DNS-rebinding page (its own name pointed at 127.0.0.1) sends a matching Origin and Host,
so comparing the two is not enough; its name is not on that list.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..api.client import RunComfyClient
from ..api.config import Credentials, delete_token, find_credentials, resolve_base_url, save_token, token_problem
from ..api.errors import AuthenticationError, ConfigurationError, RunComfyError

ROUTE = "/runcomfy/seedream/token"
MAX_BODY_BYTES = 4096
CHECK_TIMEOUT_S = 20.0
ROUTE_METHODS = ("GET", "HEAD", "POST", "DELETE")  # GET also answers HEAD
ALLOWED_HOSTS_ENV = "RUNCOMFY_SEEDREAM_ALLOWED_HOSTS"
NOT_A_TOKEN = "That does not look like a RunComfy API token (8-512 visible characters, no spaces)."
log = logging.getLogger("runcomfy.seedream")


def token_status(token_path: Path) -> dict[str, Any]:
    try:
        found = find_credentials(settings_file=token_path)
    except ConfigurationError as unusable:  # a malformed token somewhere: say where, never what
        return {"configured": False, "source": None, "detail": str(unusable)}
    status: dict[str, Any] = {"configured": found is not None, "source": found.kind if found else None}
    if found is not None:
        status["detail"] = found.source
    return status


def host_name(host_header: str) -> str:
    """The name or address in a Host header, without its port or brackets, lower case, no trailing dot."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8188
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port or 1.2.3.4:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


def allowed_hosts(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The extra names the user reaches this ComfyUI under (RUNCOMFY_SEEDREAM_ALLOWED_HOSTS, comma-separated)."""
    env = os.environ if env is None else env
    return frozenset(filter(None, (host_name(name) for name in (env.get(ALLOWED_HOSTS_ENV) or "").split(","))))


def reachable_host(host_header: str | None, env: Mapping[str, str] | None = None) -> bool:
    """True when the browser reached this ComfyUI under a name an attacker cannot point at their own server:
    localhost and *.localhost (browsers resolve those to loopback themselves), an IP address (the address
    is the server: this machine's loopback or LAN address, as with --listen), or a name the user listed.
    A request without a Host header comes from no browser, so no web page can send it."""
    if host_header is None:
        return True
    host = host_name(host_header)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in allowed_hosts(env)


def same_origin(headers: Any, host: str | None, scheme: str) -> bool:
    """True unless the browser says the request comes from another site."""
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return False
    origin = headers.get("Origin")
    if origin:
        parts = urlsplit(origin)
        return parts.netloc.lower() == (host or "").lower() and parts.scheme in (scheme, "http", "https")
    return True


def parsed_token(raw: bytes) -> str | None:
    """The token in a {"token": "..."} body; None for anything else, however it is malformed or nested."""
    try:
        return plausible_token(json.loads(raw).get("token"))
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, or nested past the parser's depth
        return None


async def read_capped(content: Any, cap: int) -> bytes:
    """The body, reading at most cap + 1 bytes: a result longer than `cap` means it is too large. A chunked body
    (no Content-Length) arrives in pieces, and one read returns only what has arrived, so read until the end."""
    pieces: list[bytes] = []
    size = 0
    while size <= cap:
        piece = await content.read(cap + 1 - size)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


def plausible_token(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    token = value.strip()
    return token if token_problem(token) is None else None


async def check_with_service(token: str, base_url: str) -> tuple[bool, str]:
    """A cheap read-only call (the model's catalog entry) tells whether RunComfy accepts the token."""
    client = RunComfyClient(Credentials(token, "candidate"), base_url)
    try:
        await asyncio.wait_for(client.model_info(), CHECK_TIMEOUT_S)
        return True, "RunComfy accepted the token."
    except AuthenticationError:
        return False, "RunComfy refused this token (invalid, expired or revoked). Copy it again from your RunComfy account."
    except (RunComfyError, asyncio.TimeoutError) as exc:
        return False, f"Could not check the token with RunComfy ({type(exc).__name__}); it was not saved. Try again."
    finally:
        await client.aclose()


def refusal(request: Any) -> Any:
    """403 for a request another site could have made; None when it may be answered (every route of the pack)."""
    host = request.headers.get("Host")
    if not reachable_host(host):
        shown = host_name(host or "")[:80]
        return refuse(
            403,
            f"The RunComfy settings and jobs panel only answer when ComfyUI is opened at localhost or an IP "
            f"address, and this page was opened as {shown!r}. If that is how you reach this ComfyUI, add the name to the "
            f"environment variable {ALLOWED_HOSTS_ENV} (comma-separated names, e.g. {ALLOWED_HOSTS_ENV}={shown}) and restart ComfyUI.",
        )
    if not same_origin(request.headers, host, request.scheme):
        return refuse(403, "Cross-site requests are not accepted.")
    return None


def refuse(status: int, message: str) -> Any:
    from aiohttp import web

    return web.json_response({"ok": False, "error": message}, status=status)


def register(routes: Any, token_path: Callable[[], Path]) -> None:
    """Add the route to ComfyUI's aiohttp route table (PromptServer.instance.routes)."""
    from aiohttp import web

    @routes.get(ROUTE)
    async def get_token_status(request: web.Request) -> web.Response:
        if (refused := refusal(request)) is not None:
            return refused
        return web.json_response({"ok": True, **token_status(token_path())})

    @routes.post(ROUTE)
    async def set_token(request: web.Request) -> web.Response:
        if (refused := refusal(request)) is not None:
            return refused
        if request.content_type != "application/json":
            return refuse(415, "Send the token as JSON.")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return refuse(413, "Request too large.")
        raw = await read_capped(request.content, MAX_BODY_BYTES)  # a chunked body has no Content-Length
        if len(raw) > MAX_BODY_BYTES:
            return refuse(413, "Request too large.")
        token = parsed_token(raw)
        if token is None:
            return refuse(400, NOT_A_TOKEN)
        ok, message = await check_with_service(token, resolve_base_url())
        if not ok:
            return refuse(400, message)
        await asyncio.to_thread(save_token, token_path(), token)
        log.info("RunComfy API token saved from ComfyUI settings")
        status = token_status(token_path())
        if status["source"] == "env":
            message += " Note: an environment variable (RUNCOMFY_API_TOKEN) is set and takes precedence."
        return web.json_response({"ok": True, "message": message, **status})

    @routes.delete(ROUTE)
    async def forget_token(request: web.Request) -> web.Response:
        if (refused := refusal(request)) is not None:
            return refused
        removed = await asyncio.to_thread(delete_token, token_path())
        return web.json_response({"ok": True, "removed": removed, **token_status(token_path())})


def registered_by(routes: Any) -> str | None:
    """The module that already put this route in `routes`, if any. ComfyUI applies the whole table with
    `app.add_routes` once every pack is loaded, and a path and method added twice make it refuse to start.
    Two copies of this pack (a manager install beside a manual clone) are different module objects that share
    only this table, so the table is what tells whether the route is taken."""
    for route in routes:
        if getattr(route, "path", None) == ROUTE and str(getattr(route, "method", "")).upper() in ROUTE_METHODS:
            return getattr(getattr(route, "handler", None), "__module__", None) or "another module"
    return None


def register_with_comfyui(token_path: Callable[[], Path], *more: Callable[[Any], None]) -> bool:
    """Register on PromptServer.instance.routes when running inside ComfyUI; quietly skip otherwise. `more`: the
    pack's other routes, each `register(routes)`, put in with the token route. Once per process: a second copy of
    the pack leaves the first one's routes in place and says so."""
    server = sys.modules.get("server")  # ComfyUI's, loaded before any pack; never imported from here
    try:
        routes = server.PromptServer.instance.routes
    except Exception:  # noqa: BLE001 - outside ComfyUI there is no server to register with
        return False
    try:
        owner = registered_by(routes)
        if owner is None:
            register(routes, token_path)
            for register_more in more:
                register_more(routes)
            return True
    except Exception as failure:  # noqa: BLE001 - a pack must never stop ComfyUI; the node works without the route
        log.warning("RunComfy Seedream: the settings and jobs panel are unavailable (%s: %s)", type(failure).__name__, failure)
        return False
    log.warning(
        "RunComfy Seedream: %s is already served by another copy of this pack (%s); this copy (%s) uses it. "
        "Keep one of the two folders in custom_nodes.",
        ROUTE,
        owner.rsplit(".nodes.", 1)[0],
        __name__.rsplit(".nodes.", 1)[0],
    )
    return False


__all__ = ["ROUTE", "register", "register_with_comfyui", "token_status"]
