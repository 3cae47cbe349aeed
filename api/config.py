"""Where the API token and the service address come from.

The token is read from the environment, the file saved from ComfyUI's settings or
RunComfy's CLI token file, never from a node input, so it cannot end up in a saved
workflow or PNG metadata.

Invariant: a token is checked where it is read. It is printable ASCII, 8 to 512
characters, with no whitespace or control characters; anything else is a
`ConfigurationError` naming the source (never the value) before any work, so a
malformed token can never reach an HTTP library, its logs or its exceptions. A token
file that is there but holds no usable token (too large, malformed, empty, no "token"
entry) is a `ConfigurationError` naming the file and what is wrong, never its contents.

And the proxies set in the environment, as httpx uses them (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, in
either case, the lower-case one winning), named in words a user can act on: the variable and host:port, never the
credentials a proxy URL may hold. `unusable_proxy()` names a proxy httpx cannot use (SOCKS without the optional
`socksio`, ftp://…), so the run is refused before sending instead of failing with httpx's ImportError;
`proxy_for(url)` is the proxy a request to `url` goes through. On Windows and macOS a proxy may also come from the
system's settings (urllib reads them): it is then named as such.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .files import read_regular_file, write_atomically

DEFAULT_BASE_URL = "https://model-api.runcomfy.net/v1"
BASE_URL_ENV = "RUNCOMFY_MODEL_API_BASE"
TOKEN_ENV_VARS: tuple[str, ...] = ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN")
_TOKEN_FILE_KEYS: tuple[str, ...] = ("token", "api_token", "access_token", "api_key")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


TOKEN_FILE_MAX_BYTES = 64 * 1024
TOKEN_MIN_CHARS = 8
TOKEN_MAX_CHARS = 512


def token_problem(token: object) -> str | None:
    """Why `token` cannot be a RunComfy API token, in words that never repeat it; None when it can."""
    if not isinstance(token, str):
        return "is not text"
    if not TOKEN_MIN_CHARS <= len(token) <= TOKEN_MAX_CHARS:
        return f"has {len(token)} characters; a token has {TOKEN_MIN_CHARS} to {TOKEN_MAX_CHARS}"
    if any(ch in "\r\n" for ch in token):
        return "contains a line break"
    if any(ch.isspace() for ch in token):
        return "contains a space or tab"
    if any(not 33 <= ord(ch) <= 126 for ch in token):
        return "contains a control or non-ASCII character"
    return None


@dataclass(frozen=True)
class Credentials:
    """A checked token and a human-readable note of where it came from (never the token itself)."""

    token: str = field(repr=False)
    source: str = "the token given to the script"
    kind: str = "given"  # env | settings | cli | given

    def __post_init__(self) -> None:
        problem = token_problem(self.token)
        if problem is not None:
            raise ConfigurationError(
                f"The RunComfy API token from {self.source} {problem}. Copy the token again from your RunComfy "
                "account (only the token, no quotes, spaces or line breaks) and replace it there. Nothing was sent."
            )

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r}, token=<hidden>)"


def cli_token_files(env: Mapping[str, str]) -> list[Path]:
    """RunComfy's CLI keeps its token in ~/.config/runcomfy/token.json."""
    candidates = []
    if env.get("XDG_CONFIG_HOME"):
        candidates.append(Path(env["XDG_CONFIG_HOME"]) / "runcomfy" / "token.json")
    home = env.get("HOME") or str(Path.home())
    candidates.append(Path(home) / ".config" / "runcomfy" / "token.json")
    return list(dict.fromkeys(candidates))


class _FileProblem(Exception):
    """A token file exists but holds no usable token; the text says why, never what is in it."""


_JSON_KINDS = {list: "a JSON list", int: "a JSON number", float: "a JSON number", bool: "a JSON true/false", type(None): "JSON null"}


def _token_from_file(path: Path) -> str | None:
    """The token in `path`, None when there is no such file; `_FileProblem` when it exists but holds none."""
    try:
        # Symlinks are followed (dotfile managers use them).
        data = read_regular_file(path, max_bytes=TOKEN_FILE_MAX_BYTES, follow_symlinks=True)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as failure:
        if failure.errno == errno.EFBIG:
            raise _FileProblem(f"is larger than {TOKEN_FILE_MAX_BYTES // 1024} KiB, far more than a token") from None
        if failure.errno == errno.EINVAL:
            raise _FileProblem("is not a regular file (a folder or a device?)") from None
        if isinstance(failure, PermissionError):
            raise _FileProblem("cannot be read (permission denied)") from None
        raise _FileProblem(f"cannot be read ({type(failure).__name__}, errno {failure.errno})") from None
    try:
        raw = data.decode("utf-8-sig").strip()  # -sig: editors on Windows add a BOM
    except UnicodeDecodeError:
        raise _FileProblem("is not UTF-8 text") from None
    if not raw:
        raise _FileProblem("is empty")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        if raw.startswith(("{", "[", '"')):
            raise _FileProblem("is malformed: it is not valid JSON") from None
        return raw  # a bare token; checked by Credentials like any other
    if isinstance(value, dict):
        present = [key for key in _TOKEN_FILE_KEYS if key in value]
        for key in present:
            if isinstance(value[key], str) and value[key].strip():
                return value[key].strip()
        if not present:
            raise _FileProblem('has no "token" entry')
        unusable = "not text" if not isinstance(value[present[0]], str) else "empty"
        raise _FileProblem(f'is malformed: its "{present[0]}" entry is {unusable}')
    if isinstance(value, str):
        if not value.strip():
            raise _FileProblem("is empty (an empty JSON string)")
        return value.strip()
    raise _FileProblem(f"is malformed: it holds {_JSON_KINDS.get(type(value), 'something else')}")


def _file_credentials(path: Path, source: str, kind: str, where: str, fix: str) -> Credentials | None:
    try:
        token = _token_from_file(path)
    except _FileProblem as problem:
        raise ConfigurationError(
            f'The RunComfy API token file {where} {problem}; it should hold only {{"token": "..."}}. {fix} Nothing was sent.'
        ) from None
    return None if token is None else Credentials(token, source, kind)


def find_credentials(env: Mapping[str, str] | None = None, settings_file: Path | None = None) -> Credentials | None:
    """The token from RUNCOMFY_API_TOKEN, else RUNCOMFY_TOKEN, else the one saved from ComfyUI's settings
    (`settings_file`), else RunComfy's CLI token file; None when there is none.

    The first source that is there is the one used: a token file that exists but holds no usable token
    (too large, malformed, empty, no "token" entry) is a `ConfigurationError` naming the file, not passed
    over for the next source (that could be another account's token). An environment variable is looked
    at first, so it wins over damaged files, as over good ones."""
    env = os.environ if env is None else env
    for name in TOKEN_ENV_VARS:
        value = (env.get(name) or "").strip()
        if value:
            return Credentials(value, f"environment variable {name}", "env")
    if settings_file is not None:
        found = _file_credentials(
            settings_file,
            "ComfyUI settings (RunComfy > API token)",
            "settings",
            f"saved from ComfyUI's settings ({settings_file})",
            "Save the token again in ComfyUI's Settings > RunComfy > API token (that replaces the file), or delete the file.",
        )
        if found is not None:
            return found
    for path in cli_token_files(env):
        found = _file_credentials(
            path,
            f"token file {path}",
            "cli",
            str(path),
            "Put your token from your RunComfy account in it in that form, or delete the file.",
        )
        if found is not None:
            return found
    return None


def resolve_credentials(env: Mapping[str, str] | None = None, settings_file: Path | None = None) -> Credentials:
    """Like `find_credentials`, but a missing token is an error that says where to put one."""
    found = find_credentials(env, settings_file)
    if found is not None:
        return found
    raise ConfigurationError(
        "No RunComfy API token found. Create one in your RunComfy account, then either enter it in ComfyUI's "
        "Settings > RunComfy > API token, or set the environment variable RUNCOMFY_API_TOKEN before starting "
        'ComfyUI, or save it as {"token": "..."} in ~/.config/runcomfy/token.json. Nothing was sent.'
    )


def resolve_base_url(env: Mapping[str, str] | None = None) -> str:
    """RUNCOMFY_MODEL_API_BASE, same meaning as for RunComfy's CLI, without a trailing slash."""
    env = os.environ if env is None else env
    base = (env.get(BASE_URL_ENV) or "").strip() or DEFAULT_BASE_URL
    if not base.startswith(("https://", "http://")):
        raise ConfigurationError(f"{BASE_URL_ENV} is {base!r}; it must be an http(s) URL such as {DEFAULT_BASE_URL}.")
    host = (urlsplit(base).hostname or "").lower()
    if base.startswith("http://") and host not in _LOOPBACK_HOSTS:
        raise ConfigurationError(
            f"{BASE_URL_ENV} is {base!r}: plain http would send your token unencrypted. "
            "Use https (plain http is allowed only for a local test service on 127.0.0.1)."
        )
    return base.rstrip("/")


STATE_DIR_ENV = "RUNCOMFY_SEEDREAM_STATE_DIR"
CACHE_MB_ENV = "RUNCOMFY_SEEDREAM_CACHE_MB"
BATCH_MB_ENV = "RUNCOMFY_SEEDREAM_BATCH_MB"
MAX_UPLOADS_ENV = "RUNCOMFY_SEEDREAM_MAX_UPLOADS"
DEFAULT_MAX_UPLOADS = 4  # uploads and submits in flight per process; jobs waiting at RunComfy do not count
DEFAULT_BATCH_BYTES = 3 * 1024**3  # the output batch and its native copies; the largest real Seedream set needs ~2.1 GiB
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # one result file
MAX_CACHED_RESULTS = 64
DEFAULT_CACHE_BYTES = 2 * 1024**3  # saved results in the user folder


@dataclass(frozen=True)
class Limits:
    """Memory and disk bounds of a run."""

    cache_max_bytes: int = DEFAULT_CACHE_BYTES  # saved results, least recently used evicted first
    cache_max_entries: int = MAX_CACHED_RESULTS
    batch_max_bytes: int = DEFAULT_BATCH_BYTES  # the padded float32 output batch
    max_download_bytes: int = MAX_DOWNLOAD_BYTES  # one result file
    max_uploads: int = DEFAULT_MAX_UPLOADS  # encodes, uploads and submits in flight at once in this process

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """RUNCOMFY_SEEDREAM_CACHE_MB and RUNCOMFY_SEEDREAM_BATCH_MB (in MiB) and RUNCOMFY_SEEDREAM_MAX_UPLOADS, when set."""
        env = os.environ if env is None else env
        values = {}
        raw = (env.get(MAX_UPLOADS_ENV) or "").strip()
        if raw:
            if not raw.isdigit() or not 1 <= int(raw) <= 64:
                raise ConfigurationError(f"{MAX_UPLOADS_ENV} is {raw[:20]!r}; it must be a whole number from 1 to 64 (or unset).")
            values["max_uploads"] = int(raw)
        for name, attribute in ((CACHE_MB_ENV, "cache_max_bytes"), (BATCH_MB_ENV, "batch_max_bytes")):
            raw = (env.get(name) or "").strip()
            if not raw:
                continue
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigurationError(f"{name} is {raw[:20]!r}; it must be a whole number of MiB, at least 1 (or unset).")
            values[attribute] = int(raw) * 2**20
        return cls(**values)


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the job records and saved results live outside ComfyUI (inside, ComfyUI's user directory)."""
    env = os.environ if env is None else env
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    cache_home = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(cache_home) / "runcomfy-seedream"


def save_token(path: Path, token: str) -> None:
    """Store a token readable only by its owner (0600 in a 0700 folder), replacing any earlier one atomically."""
    write_atomically(path, json.dumps({"token": token}).encode("utf-8"))
    os.chmod(path.parent, 0o700)


def delete_token(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


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
