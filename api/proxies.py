"""Proxies set in the environment, as httpx uses them (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, in either
case, the lower-case one winning), named in words a user can act on: the variable and host:port, never the
credentials a proxy URL may hold.

    why = unusable_proxy()            # a proxy httpx cannot use (SOCKS without socksio, ftp://…): refuse before sending
    proxy = proxy_for(url)            # the proxy a request to `url` goes through, or None; str(proxy) names it

SOCKS proxies (common with VPN clients) work when the small `socksio` package is installed (`httpx[socks]`); the
pack does not require it, so without it the run is refused naming the variable, instead of failing with httpx's
ImportError. On Windows and macOS a proxy may also come from the system's settings (urllib reads them): it is then
named as such.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("https", "http", "all")  # the *_PROXY variables httpx reads
SOCKS = ("socks5", "socks5h")  # what httpx speaks with socksio
SYSTEM = "your system's proxy settings"


@dataclass(frozen=True)
class ProxySetting:
    variable: str  # "HTTPS_PROXY" as set (its case kept), or SYSTEM
    scheme: str  # of the proxy URL: "http", "socks5" …
    where: str  # host:port, never the credentials
    problem: str | None = None  # why it is no proxy address at all (no host, a port that cannot be, not a URL)

    def __str__(self) -> str:
        return f"the proxy {self.where} set by {self.variable}"


def _set(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """scheme ("https", "http", "all", "no") -> (the variable as set, its value); lower case wins, as in urllib."""
    found: dict[str, tuple[str, str]] = {}
    for name, value in env.items():
        lower = name.lower()
        if not lower.endswith("_proxy") or not value or not value.strip():
            continue
        key = lower[: -len("_proxy")]
        if key in (*SCHEMES, "no") and (key not in found or name == lower):
            found[key] = (name, value.strip())
    return found


def _proxies(env: Mapping[str, str] | None) -> dict[str, tuple[str, str]]:
    if env is not None:
        return _set(env)
    found = _set(os.environ)
    if not any(key in found for key in SCHEMES):  # Windows registry, macOS system configuration
        try:
            system = urllib.request.getproxies()
        except Exception:  # noqa: BLE001 - a system setting that cannot be read is no proxy
            system = {}
        for key in SCHEMES:
            if system.get(key):
                found[key] = (SYSTEM, system[key])
    return found


def describe(variable: str, value: str) -> ProxySetting:
    """A proxy URL as it may be shown: its scheme and host:port, without user name or password."""
    url = value if "://" in value else f"http://{value}"
    scheme = url.split("://", 1)[0].lower()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        try:
            port = parts.port
        except ValueError:
            return ProxySetting(variable, scheme, host or "(no host)", "its port is not a number from 0 to 65535")
    except ValueError:
        return ProxySetting(variable, scheme, "(an address that cannot be read)", "it is not a URL")
    where = f"{host}:{port}" if port is not None else host
    if not host:
        return ProxySetting(variable, scheme, "(no host)", "it names no host")
    if "://" not in value and "/" in value:  # "http//proxy:3128": httpx would take "http" for the host
        return ProxySetting(variable, scheme, where, "it is not a URL")
    return ProxySetting(variable, scheme, where)


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether NO_PROXY exempts `host`: "*", the host itself, or a domain it is in (".example.com" or "example.com")."""
    host = host.lower().strip("[]")
    for entry in (part.strip().lower() for part in no_proxy.split(",")):
        if entry == "*":
            return True
        entry = entry.split("://", 1)[-1].strip("[]")
        if entry.startswith("."):  # ".example.com": the hosts in that domain, not the domain's own
            if host.endswith(entry):
                return True
        elif entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> ProxySetting | None:
    """The proxy a request to `url` goes through (None: direct), from `env` (default: the environment, then the
    system's settings)."""
    proxies = _proxies(env)
    parts = urlsplit(url)
    if "no" in proxies and bypassed(parts.hostname or "", proxies["no"][1]):
        return None
    for key in (parts.scheme.lower(), "all"):
        if key in proxies:
            return describe(*proxies[key])
    return None


def unusable_proxy(env: Mapping[str, str] | None = None) -> str | None:
    """Why the proxies set cannot be used at all (httpx refuses to build a connection pool with them), or None."""
    proxies = _proxies(env)
    if "no" in proxies and "*" in (part.strip() for part in proxies["no"][1].split(",")):
        return None  # NO_PROXY=*: httpx uses no proxy at all
    for key in SCHEMES:
        if key not in proxies:
            continue
        proxy = describe(*proxies[key])
        shown = f"{proxy.scheme}://{proxy.where}"
        if proxy.problem is not None:
            shown = proxy.where if proxy.where.startswith("(") else shown
            return (
                f"{proxy.variable} is set to a proxy address that cannot be used ({shown}: {proxy.problem}). Fix it (a proxy "
                f"is written as http://host:port) or unset {proxy.variable} for ComfyUI. Nothing was sent."
            )
        if proxy.scheme in SOCKS:
            if importlib.util.find_spec("socksio") is None:
                return (
                    f"{proxy.variable} is set to a SOCKS proxy ({shown}), as VPN clients often set it; SOCKS needs the small "
                    "socksio package, which is not installed. Install it into ComfyUI's Python (python -m pip install socksio), "
                    f"or unset {proxy.variable} for ComfyUI. Nothing was sent."
                )
        elif proxy.scheme not in ("http", "https"):
            return (
                f"{proxy.variable} is set to {shown}, a kind of proxy this node cannot use (only http://, https:// and, with "
                f"the socksio package, socks5:// proxies). Fix or unset {proxy.variable} for ComfyUI. Nothing was sent."
            )
    return None
