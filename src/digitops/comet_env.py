"""Safe, bounded defaults for the comet_ml SDK, and a cheap "is Comet there?" check.

comet_ml is quiet and slow when things go wrong: out of the box an unreachable
server costs 25-30 s per experiment and one that accepts connections but never
answers about 4 minutes, it probes cloud metadata hosts (AWS/GCP/Azure) and may
start error reporting. :func:`prepare` sets environment variables that turn the
probing off and bound every retry and timeout; it must run before ``comet_ml``
is first imported, so everything in digitops imports the SDK through
:func:`import_comet`. Values already in the environment win (``setdefault``),
so a user can still loosen a bound.

The SDK's own settings (API key, server, workspace, project) are read the way
the SDK reads them (:func:`setting`): the environment, ``./.env``, the file
named by ``$COMET_CONFIG`` (or the deprecated ``$COMET_INI``),
``./.comet.config``, then ``~/.comet.config``, first found wins
(``comet_ml/config/config_class.py``). The ini files are parsed here with
``configparser`` so that deciding whether Comet is on never imports the slow
SDK.

Across processes (the runner, notebook kernels, the CLI stages of one
pipeline) a failed contact is remembered for :data:`UNREACHABLE_TTL_S` seconds
in ``$DIGITOPS_HOME/comet/unreachable.json``, so one dead server costs one
bounded probe per pipeline instead of one per call.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urljoin, urlparse

from digitops import atomic, config

#: Environment defaults applied before comet_ml is imported (see module docstring).
SDK_DEFAULTS: dict[str, str] = {
    # No cloud-metadata probing, no host/GPU/CPU/network/disk details or monitors.
    "COMET_AUTO_LOG_ENV_DETAILS": "false",
    "COMET_AUTO_LOG_ENV_HOST": "false",
    "COMET_AUTO_LOG_ENV_GPU": "false",
    "COMET_AUTO_LOG_ENV_CPU": "false",
    "COMET_AUTO_LOG_ENV_NETWORK": "false",
    "COMET_AUTO_LOG_ENV_DISK": "false",
    # digitops logs the commit itself as a tag; no git patches, code or CO2 uploads.
    "COMET_AUTO_LOG_GIT_METADATA": "false",
    "COMET_AUTO_LOG_GIT_PATCH": "false",
    "COMET_AUTO_LOG_CODE": "false",
    "COMET_AUTO_LOG_CO2": "false",
    # No sentry error reporting, no usage reporting, no announcements.
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "COMET_INTERNAL_REPORTING": "false",
    "COMET_DISABLE_ANNOUNCEMENT": "true",
    # No monkey-patching of Keras/TF: the notebooks log through digitops.
    "COMET_DISABLE_AUTO_LOGGING": "1",
    "COMET_DISPLAY_SUMMARY_LEVEL": "0",
    # digitops prints one "comet: ..." line per action (with the right next step, e.g.
    # `digitops sync`); the SDK's own INFO/WARNING chatter would contradict it, and at ERROR
    # it prints whole tracebacks (an explicit level turns its traceback hiding off).
    "COMET_LOGGING_CONSOLE": "CRITICAL",
    # Bounded retries and timeouts (seconds).
    "COMET_HTTP_SESSION_RETRY_TOTAL": "1",
    "COMET_HTTP_SESSION_RETRY_BACKOFF_FACTOR": "1",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_TOTAL": "1",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_CONNECT": "1",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_READ": "0",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_STATUS": "1",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_BACKOFF_FACTOR": "1",
    "COMET_GET_OR_ADD_EXPERIMENT_RETRY_BACKOFF_MAX": "2",
    "COMET_TIMEOUT_HTTP": "5",
    "COMET_TIMEOUT_API": "5",
    "COMET_TIMEOUT_CLEANING": "20",
    "COMET_TIMEOUT_UPLOAD": "60",
    "COMET_TIMEOUT_FILE_UPLOAD": "60",
    "COMET_TIMEOUT_FILE_DOWNLOAD": "120",
    "COMET_TIMEOUT_REMOTE_MODEL_DOWNLOAD": "120",
    "COMET_TIMEOUT_ASSET_DOWNLOAD": "120",
}

DEFAULT_URL_OVERRIDE = "https://www.comet.com/clientlib/"
#: How long a failed contact with Comet is remembered by every digitops process.
UNREACHABLE_TTL_S = 300.0
#: Connect and read timeouts of :func:`probe` (seconds).
PROBE_TIMEOUT_S = (2.0, 3.0)

def prepare() -> None:
    """Put :data:`SDK_DEFAULTS` into ``os.environ`` (user values win). Idempotent."""
    for key, value in SDK_DEFAULTS.items():
        os.environ.setdefault(key, value)


def import_comet() -> ModuleType:
    """``comet_ml``, imported only after :func:`prepare` (so the bounds are in force)."""
    prepare()
    import comet_ml

    return comet_ml


#: Settings digitops reads from the SDK's configuration, as ``[comet]`` keys of its ini files.
SETTINGS = ("api_key", "url_override", "workspace", "project_name")


def _config_files() -> list[Path]:
    """The SDK's ini files in its order of precedence (highest first)."""
    files = []
    override = config.env("COMET_INI") or config.env("COMET_CONFIG")
    if override:
        path = Path(override).expanduser()
        files.append(path / ".comet.config" if path.is_dir() else path)
    files.append(Path(".comet.config"))
    files.append(Path("~/.comet.config").expanduser())
    return files


@functools.lru_cache(maxsize=16)
def _parse(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    """``{key: value}`` of a ``.comet.config`` ini file's ``[comet]`` section (``.env``: ``COMET_*`` lines)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if Path(path).name == ".env":
        out = {}
        for line in text.splitlines():
            line = line.strip().removeprefix("export ").strip()
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip().strip("'\"")
        return out
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error:
        return {}  # the SDK would not read a broken file either
    return {k: v.strip() for k, v in parser["comet"].items()} if parser.has_section("comet") else {}


def _read(path: Path) -> dict[str, str]:
    try:
        stat = path.stat()
        return _parse(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return {}


def setting(key: str) -> str | None:
    """The SDK's setting ``key`` (one of :data:`SETTINGS`) from where the SDK would find it, or None."""
    env = f"COMET_{key.upper()}"
    value = config.env(env) or _read(Path(".env")).get(env)
    if value:
        return value
    for path in _config_files():
        value = _read(path).get(key)
        if value:
            return value
    return None


def api_key() -> str | None:
    """The Comet API key (environment or the SDK's configuration files)."""
    return setting("api_key")


def offline_forced() -> bool:
    """True when ``--offline`` / ``$DIGITOPS_COMET_OFFLINE`` asks not to contact Comet at all."""
    return (config.env("DIGITOPS_COMET_OFFLINE") or "").strip().lower() in {"1", "true", "yes", "on"}


def force_offline() -> None:
    """Make this process and its children (notebook kernels) keep Comet data offline."""
    os.environ["DIGITOPS_COMET_OFFLINE"] = "1"


def url_override() -> str:
    """The SDK's endpoint (``url_override`` via :func:`setting`, default Comet's cloud)."""
    return setting("url_override") or DEFAULT_URL_OVERRIDE


def server_root() -> str:
    """Scheme and host of the Comet server, e.g. ``https://www.comet.com/``."""
    parsed = urlparse(url_override())
    return f"{parsed.scheme}://{parsed.netloc}/"


def workspace() -> str | None:
    """The configured workspace (:func:`setting`), or None to let Comet use the key's default one."""
    return setting("workspace") or None


def state_dir() -> Path:
    """Where digitops keeps its Comet bookkeeping (per-run sync state, reachability)."""
    return config.home() / "comet"


def offline_dir() -> Path:
    """Where offline experiment archives are kept until ``digitops sync`` uploads them."""
    return config.home() / "comet-offline"


def _unreachable_file() -> Path:
    return state_dir() / "unreachable.json"


@dataclass
class Reachability:
    """Result of :func:`probe`."""

    ok: bool
    reason: str = ""
    seconds: float = 0.0


def recently_unreachable(ttl_s: float = UNREACHABLE_TTL_S) -> str | None:
    """The reason of a failed contact within ``ttl_s`` for this server, else None."""
    path = _unreachable_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("server") != server_root() or time.time() - float(data.get("at", 0)) > ttl_s:
        return None
    return str(data.get("reason") or "unreachable")


def mark_unreachable(reason: str) -> None:
    """Remember a failed contact so the next calls (any process) skip Comet quickly."""
    _last_ok.pop(server_root(), None)
    path = _unreachable_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {"server": server_root(), "at": time.time(), "reason": reason[:300]})


def mark_reachable() -> None:
    """Forget an earlier failed contact."""
    try:
        _unreachable_file().unlink()
    except FileNotFoundError:
        pass


def probe(timeout: tuple[float, float] = PROBE_TIMEOUT_S) -> Reachability:
    """One bounded request to the server's version endpoint (the SDK's first call too)."""
    import requests

    url = urljoin(server_root(), "clientlib/isAlive/ver")
    start = time.monotonic()
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        return Reachability(False, f"{type(exc).__name__} contacting {server_root()}", time.monotonic() - start)
    seconds = time.monotonic() - start
    if response.status_code >= 500:
        return Reachability(False, f"HTTP {response.status_code} from {url}", seconds)
    return Reachability(True, "", seconds)


#: A successful probe is trusted by this process for this long (seconds): one comparison
#: makes several calls and each need not cost a round trip.
REACHABLE_TTL_S = 30.0
_last_ok: dict[str, float] = {}


def check_online(use_memo: bool = True) -> Reachability:
    """Whether to try Comet now: forced offline, remembered failure, else a live :func:`probe`."""
    if offline_forced():
        return Reachability(False, "offline mode requested (--offline / DIGITOPS_COMET_OFFLINE)")
    if use_memo:
        reason = recently_unreachable()
        if reason:
            return Reachability(False, f"{reason} (remembered; retried after {int(UNREACHABLE_TTL_S)} s)")
        if time.monotonic() - _last_ok.get(server_root(), -REACHABLE_TTL_S) < REACHABLE_TTL_S:
            return Reachability(True)
    result = probe()
    if result.ok:
        _last_ok[server_root()] = time.monotonic()
        mark_reachable()
    else:
        _last_ok.pop(server_root(), None)
        mark_unreachable(result.reason)
    return result


def redact(text: Any) -> str:
    """``text`` with the API key (if any) masked, for messages that quote SDK errors."""
    out = str(text)
    key = api_key()
    if key:
        out = out.replace(key, "***")
    return out
