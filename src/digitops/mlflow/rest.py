"""The MLflow REST API through ``requests``, restricted to the endpoints GitLab documents.

Why not the ``mlflow`` client. ``mlflow-skinny`` 3.x pulls in databricks-sdk,
opentelemetry and pydantic, and its client calls endpoints outside GitLab's
subset (``MlflowClient`` methods such as ``search_model_versions``, logged
models, traces), which GitLab answers with 404. The handful of calls digitops
needs is a few lines of ``requests`` (already a dependency); the full ``mlflow``
package is only in the dev extra, for the test server.

Endpoints used (GitLab, "MLflow client compatibility", the MLflow 1.28-era
``/api/2.0/mlflow/...`` API): experiments/get-by-name, experiments/create,
runs/create, runs/get, runs/search (one experiment id per call), runs/log-batch,
runs/set-tag, runs/update, the registry calls of :mod:`digitops.mlflow.registry`,
and GET/PUT of single files at a run's artifact root.

Retries are bounded and only where a repeat cannot do harm: GETs and artifact PUTs
(a file written twice is the same file) on any transient failure; POST/PATCH/DELETE
only when the request was never sent (connection refused, connect timeout) or the
server said 429 (not processed). A create answered with a 5xx may have been saved:
the caller looks it up (runs by the ``digitops.run_id`` tag) before creating again.
The token travels in the ``Authorization`` header only and is removed from every
message this module raises.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlparse

import requests

from digitops.errors import TrackingError

#: the most a ``Retry-After`` answer makes us wait (seconds)
RETRY_AFTER_CAP = 10.0
#: first backoff step (seconds); doubles each retry
BACKOFF = 0.25
#: what a 5xx/429/connection failure is retried on, by method (see the module docstring)
_IDEMPOTENT = {"GET", "PUT", "HEAD"}


class MlflowError(TrackingError):
    """Something went wrong talking to the MLflow server; the message never contains the token."""


class MlflowUnavailable(MlflowError):
    """The server cannot be used now: refused, reset, timed out, 5xx or 429 after the bounded retries."""


class MlflowRefused(MlflowError):
    """The server answered 4xx: the request itself is wrong or names something that does not exist."""

    def __init__(self, message: str, *, status: int, error_code: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def _never_sent(exc: requests.RequestException) -> bool:
    """True when ``exc`` means the request never reached the server (safe to repeat any method)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        text = repr(exc)
        # urllib3 wraps a refused connect in NewConnectionError; a reset after sending is a ProtocolError.
        return "NewConnectionError" in text or "Connection refused" in text
    return False


class MlflowRest:
    """A small MLflow REST client (see the module docstring for what it calls and retries)."""

    def __init__(
        self, uri: str | None = None, token: str | None = None, *, timeout: float = 10.0, retries: int = 3
    ) -> None:
        if uri is None:
            from digitops import config

            uri, env_token = config.mlflow_endpoint()
            token = token if token is not None else env_token
        self.uri = uri.rstrip("/")
        self._token = token or None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies or netrc credentials from the environment
        if self._token:
            self._session.headers["Authorization"] = f"Bearer {self._token}"
        self._session.headers["User-Agent"] = "digitops"

    def __repr__(self) -> str:
        return f"MlflowRest(uri={self.uri!r}, token={'set' if self._token else 'unset'})"

    # -- plumbing ---------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` without the token (it should never be there; this makes sure)."""
        return text.replace(self._token, "***") if self._token else text

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """Send with the bounded retry policy; return a response below 400 or raise an :class:`MlflowError`."""
        method = method.upper()
        body = kwargs.pop("file", None)
        attempt, last = 0, ""
        while True:
            delay = min(BACKOFF * (2**attempt), 4.0)
            try:
                if body is not None:
                    with open(body, "rb") as handle:
                        resp = self._session.request(method, url, data=handle, timeout=self.timeout, **kwargs)
                else:
                    resp = self._session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {_short(exc)}"
                retry = method in _IDEMPOTENT or _never_sent(exc)
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}{_detail(resp)}"
                    retry = method in _IDEMPOTENT or resp.status_code == 429
                    delay = max(delay, _retry_after(resp))
                    resp.close()
                else:
                    raise self._refused(resp, what)
            if not retry or attempt >= self.retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise MlflowUnavailable(self.redact(f"MLflow at {self.uri} unavailable for {what}{tries}: {last}"))
            attempt += 1
            time.sleep(delay)

    def _refused(self, resp: requests.Response, what: str) -> MlflowRefused:
        code, message = "", ""
        try:
            data = resp.json()
            if isinstance(data, dict):
                code, message = str(data.get("error_code") or ""), str(data.get("message") or "")
        except ValueError:
            pass
        if not code:
            code = "ENDPOINT_NOT_FOUND" if resp.status_code == 404 else f"HTTP_{resp.status_code}"
        text = f"MLflow at {self.uri} refused {what}: HTTP {resp.status_code} {code}"
        if message:
            text += f": {message[:300]}"
        return MlflowRefused(self.redact(text), status=resp.status_code, error_code=code)

    # -- the API ----------------------------------------------------------------------

    def call(self, method: str, endpoint: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """``{uri}/api/2.0/mlflow/{endpoint}``: GET with ``payload`` as query, else as JSON; the decoded answer."""
        method = method.upper()
        url = f"{self.uri}/api/2.0/mlflow/{endpoint.strip('/')}"
        what = f"{method} {endpoint}"
        if method == "GET":
            resp = self._request(method, url, what, params=payload or {})
        else:
            resp = self._request(method, url, what, json=payload or {})
        if not resp.content:
            return {}
        try:
            data = resp.json()
        except ValueError:
            raise MlflowError(self.redact(f"MLflow at {self.uri} answered {what} with something that is not JSON")) from None
        if not isinstance(data, dict):
            raise MlflowError(self.redact(f"MLflow at {self.uri} answered {what} with {type(data).__name__}, not an object"))
        return data

    def search_runs(
        self,
        experiment_id: str,
        filter_string: str = "",
        order_by: list[str] | None = None,
        page_size: int = 1000,
        max_results: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Runs of ONE experiment (GitLab's limit) matching ``filter_string``, page by page (``page_token``)."""
        token: str | None = None
        yielded = 0
        while True:
            size = page_size if max_results is None else min(page_size, max_results - yielded)
            if size <= 0:
                return
            payload: dict[str, Any] = {"experiment_ids": [str(experiment_id)], "max_results": size}
            if filter_string:
                payload["filter"] = filter_string
            if order_by:
                payload["order_by"] = list(order_by)
            if token:
                payload["page_token"] = token
            page = self.call("POST", "runs/search", payload)
            for run in page.get("runs") or []:
                yield run
                yielded += 1
            token = page.get("next_page_token") or None
            if not token:
                return

    def experiment_id(self, name: str, create: bool = True) -> str:
        """The id of the experiment ``name``; created when missing (and ``create``). Race-safe."""
        for attempt in range(2):
            try:
                found = self.call("GET", "experiments/get-by-name", {"experiment_name": name})
                return str(found["experiment"]["experiment_id"])
            except MlflowRefused as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST" or not create or attempt:
                    raise
            try:
                return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
            except MlflowRefused as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise  # somebody else created it meanwhile: read it again
        raise MlflowError(f"experiment {name!r} could not be found or created")  # pragma: no cover

    def artifact_url(self, run: dict[str, Any], name: str) -> str:
        """Where the file ``name`` at the root of ``run``'s artifacts is read and written."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise MlflowError(f"artifact name {name!r}: only plain file names (GitLab keeps no folders)")
        info = run.get("info", run) if isinstance(run, dict) else {}
        if isinstance(info, dict) and "run" in info:
            info = info["run"].get("info", {})
        root = str((info or {}).get("artifact_uri") or "")
        if root.startswith("mlflow-artifacts:"):
            path = urlparse(root).path.strip("/")
            return f"{self.uri}/api/2.0/mlflow-artifacts/artifacts/{quote(path)}/{quote(name)}"
        if root.startswith(("http://", "https://")):
            return f"{root.rstrip('/')}/{quote(name)}"
        raise MlflowError(f"the run's artifact location {root!r} is neither mlflow-artifacts: nor http(s)")

    def upload_artifact(self, run: dict[str, Any], path: Path, name: str | None = None) -> None:
        """PUT ``path`` at the root of ``run``'s artifacts (as ``name``, default its file name)."""
        path = Path(path)
        name = name or path.name
        url = self.artifact_url(run, name)
        self._request("PUT", url, f"upload of {name}", file=str(path)).close()

    def download_artifact(self, run: dict[str, Any], name: str, dest: Path) -> Path:
        """GET ``name`` from ``run``'s artifact root into ``dest`` (a temp file renamed when complete)."""
        dest = Path(dest)
        url = self.artifact_url(run, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        resp = self._request("GET", url, f"download of {name}", stream=True)
        try:
            with open(tmp, "wb") as out:
                for chunk in resp.iter_content(1 << 20):
                    out.write(chunk)
            os.replace(tmp, dest)
        except requests.RequestException as exc:
            raise MlflowUnavailable(self.redact(f"MLflow at {self.uri}: download of {name} cut off: {_short(exc)}")) from exc
        finally:
            resp.close()
            tmp.unlink(missing_ok=True)
        return dest


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _detail(resp: requests.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return ""
    if isinstance(data, dict) and data.get("error_code"):
        return f" {data['error_code']}"
    return ""


def _retry_after(resp: requests.Response) -> float:
    raw = resp.headers.get("Retry-After", "")
    try:
        return min(max(float(raw), 0.0), RETRY_AFTER_CAP)
    except ValueError:
        return 0.0
