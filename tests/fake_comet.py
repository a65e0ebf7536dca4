"""A strict loopback stand-in for the Comet server, spoken to by the real comet_ml SDK.

Only the endpoints that digitops' flows make the SDK call are implemented (found
by reading comet_ml 3.58's ``connection/``, ``api.py``, ``offline.py`` and
``api_objects/model`` and by recording what it sends):

* ``/clientlib/...``: experiment handshake (``logger/add/run``, ``logger/get/run``),
  status reports, parameter/metric batches, tags, file uploads, offline metadata;
* ``/api/rest/v2/...``: experiment metadata, project listing, metric and "other"
  summaries, log-other writes, deletion, asset download, the Model Registry, and
  the multi-experiment reads: ``project/column-names``, ``project/query``
  (``API.query``'s predicates) and ``experiments/multi-metric-chart``
  (``API.get_metrics_for_chart``).

Strict like the real service: an unknown route is 404, a known route with the
wrong method is 405, a wrong or missing API key is 401 (the handshake answers
400 with Comet's ``sdk_error_code`` 90212, which is what the SDK parses), a
malformed body is 400, and JSON replies carry ``Content-Type: application/json``
exactly. Every request is recorded for assertions.

Failure modes for offline-safety tests: :meth:`FakeComet.go_down` (listening
socket closed, open connections dropped: later connects are refused),
``drop_after=N`` (goes down by itself when request N+1 arrives),
:func:`refused_url` (a port nobody listens on) and :class:`SilentServer`
(accepts connections and never answers).

Fault injection: :meth:`FakeComet.fail` answers chosen routes with an HTTP
error a number of times, either before handling them or after saving what they
carry (``saved=True``: the write happened, the client sees an error, as when a
proxy times out in front of a server that finished); ``no_url=True`` makes
the experiment handshake answer without its URL. Injected faults are recorded
in :attr:`FakeComet.injected`.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

API_KEY_NOT_REGISTERED = 90212
NO_WRITE_ACCESS_TO_EXPERIMENT = 90210
EXPERIMENT_ALREADY_EXISTS = 90999
NON_EXISTING_TEAM = 90219
INVALID_VERSION_STRING = 42001

ALLOWED_STATUSES = ["None", "Development", "Staging", "Production"]
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
EXPERIMENT_KEY = re.compile(r"^[A-Za-z0-9]{32,50}$")
#: Query sources and rule types as ``comet_ml.query`` writes them.
QUERY_SOURCES = ("metrics", "params", "metadata", "env_details", "log_other", "tag")
QUERY_TYPES = ("string", "boolean", "double", "datetime", "timenumber")
QUERY_OPERATORS = (
    "equal", "not_equal", "less", "less_or_equal", "greater", "greater_or_equal",
    "between", "not_between", "contains", "not_contains", "begins_with", "not_begins_with",
    "ends_with", "not_ends_with", "is_null", "is_not_null", "is_empty", "is_not_empty",
)
#: The fake's cap on ``targetedExperiments`` of one multi-metric request. Comet documents
#: no number; the fake refuses above the page size digitops sends, so losing the paging fails tests.
MULTI_METRIC_MAX_EXPERIMENTS = 100


class HttpError(Exception):
    """Raised by a handler to answer with ``status`` and a JSON error body."""

    def __init__(self, status: int, msg: str, sdk_error_code: int | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.body: dict[str, Any] = {"msg": msg, "code": status}
        if sdk_error_code is not None:
            self.body["sdk_error_code"] = sdk_error_code


@dataclass
class Recorded:
    """One request as the server saw it (the Authorization header is never kept)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    authorized: bool = False


@dataclass
class Asset:
    asset_id: str
    file_name: str
    data: bytes
    type: str = "asset"
    step: int | None = None
    grouping_name: str | None = None
    metadata: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class FakeExperiment:
    key: str
    workspace: str
    project: str
    project_id: str
    run_id: str
    offline: bool = False
    name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    others: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    assets: list[Asset] = field(default_factory=list)
    alive: bool = True
    start_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    end_ms: int | None = None

    def metric_values(self, name: str) -> list[float]:
        return [float(p["metricValue"]) for p in self.metrics.get(name, [])]

    def models(self) -> dict[str, list[Asset]]:
        out: dict[str, list[Asset]] = {}
        for asset in self.assets:
            if asset.type == "model-element" and asset.grouping_name:
                out.setdefault(asset.grouping_name, []).append(asset)
        return out

    def metadata(self) -> dict[str, Any]:
        return {
            "experimentKey": self.key,
            "experimentName": self.name,
            "workspaceName": self.workspace,
            "projectName": self.project,
            "projectId": self.project_id,
            "archived": False,
            "running": self.alive,
            "throttle": False,
            "startTimeMillis": self.start_ms,
            "endTimeMillis": self.end_ms,
            "durationMillis": (self.end_ms or self.start_ms) - self.start_ms,
            "optimizationId": None,
            "fileName": None,
            "filePath": None,
            "hasCrashed": False,
        }


@dataclass
class ModelItem:
    item_id: str
    version: str
    experiment_key: str
    experiment_model_name: str
    status: str
    tags: list[str]
    comment: str
    asset_ids: list[str]
    created_at: int = field(default_factory=lambda: int(time.time() * 1000))
    updated_at: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class RegistryModel:
    model_id: str
    name: str
    workspace: str
    description: str | None
    items: dict[str, ModelItem] = field(default_factory=dict)


def _summary(values: list[tuple[Any, int | None, int]]) -> dict[str, Any]:
    """A Comet-style summary: every value is a *string* (as the real service sends them)."""
    nums = []
    for value, _step, _ts in values:
        try:
            nums.append(float(value))
        except (TypeError, ValueError):
            nums = []
            break
    cur = values[-1]
    if nums:
        vmax = values[nums.index(max(nums))]
        vmin = values[nums.index(min(nums))]
    else:
        vmax = vmin = cur
    return {
        "valueMax": str(vmax[0]),
        "valueMin": str(vmin[0]),
        "valueCurrent": str(cur[0]),
        "timestampMax": vmax[2],
        "timestampMin": vmin[2],
        "timestampCurrent": cur[2],
        "stepMax": vmax[1],
        "stepMin": vmin[1],
        "stepCurrent": cur[1],
        "editable": False,
    }


class FakeComet:
    """The fake server. Use as a context manager; ``url_override`` goes into ``COMET_URL_OVERRIDE``."""

    def __init__(
        self,
        api_key: str = "fake-comet-api-key-0123456789",
        workspace: str = "digits-team",
        *,
        backend_version: str = "3.60.0",
        drop_after: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.workspace = workspace
        self.backend_version = backend_version
        self.drop_after = drop_after
        self.requests: list[Recorded] = []
        self.experiments: dict[str, FakeExperiment] = {}
        self.projects: dict[str, str] = {}
        self.models: dict[str, RegistryModel] = {}
        self.deleted: list[str] = []
        self.lock = threading.RLock()
        self.down = False
        #: path suffix -> [status, times left, saved]; see :meth:`fail`
        self.faults: dict[str, list[Any]] = {}
        self.injected: list[tuple[str, int, bool]] = []
        self.no_url = False
        self._server: ThreadingHTTPServer | None = None
        self._port = 0
        self._thread: threading.Thread | None = None
        self._routes: dict[str, dict[str, Callable[[Recorded], Any]]] = {}
        self._register_routes()

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> "FakeComet":
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self.down = False
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._port = self._server.server_address[1]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-comet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.down = True
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeComet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self) -> "FakeComet":
        """Come back up on the same port with the same state (after :meth:`go_down`)."""
        self.drop_after = None
        deadline = time.monotonic() + 5
        while True:
            try:
                return self.start(self._port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def port(self) -> int:
        return self._port

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def url_override(self) -> str:
        return f"{self.root}clientlib/"

    def env(self) -> dict[str, str]:
        """Environment that points the SDK (and digitops) at this server."""
        return {
            "COMET_API_KEY": self.api_key,
            "COMET_WORKSPACE": self.workspace,
            "COMET_URL_OVERRIDE": self.url_override,
        }

    def go_down(self) -> None:
        """Simulate the server dying: drop open connections, refuse new ones."""
        self.down = True
        server = self._server
        if server is not None:
            self._server = None
            # shutdown() waits for serve_forever, which may be this very thread's caller.
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()

    def fail(self, path_suffix: str, status: int = 500, times: int = 1, *, saved: bool = False) -> None:
        """Answer the next ``times`` requests whose path ends with ``path_suffix`` with ``status``.

        ``saved=True``: handle (and keep) the request first, then answer the error anyway.
        """
        with self.lock:
            self.faults[path_suffix] = [status, times, saved]

    def _fault_for(self, path: str) -> tuple[int, bool] | None:
        with self.lock:
            for suffix, fault in self.faults.items():
                if path.endswith(suffix) and fault[1] > 0:
                    fault[1] -= 1
                    self.injected.append((path, fault[0], fault[2]))
                    return fault[0], fault[2]
        return None

    # ------------------------------------------------------------------ queries for tests
    def paths(self, method: str | None = None) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def count(self, path_suffix: str) -> int:
        return sum(1 for p in self.paths() if p.endswith(path_suffix))

    def project_experiments(self, project: str) -> list[FakeExperiment]:
        with self.lock:
            return [e for e in self.experiments.values() if e.project == project and e.key not in self.deleted]

    def add_experiment(
        self,
        project: str,
        name: str,
        metrics: dict[str, float] | None = None,
        others: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> FakeExperiment:
        """Seed a finished experiment (as if another run had logged it)."""
        with self.lock:
            key = uuid.uuid4().hex
            exp = self._new_experiment(key, self.workspace, project, offline=False)
            exp.name = name
            exp.alive = False
            exp.end_ms = exp.start_ms + 1000
            now = int(time.time() * 1000)
            for metric, value in (metrics or {}).items():
                exp.metrics.setdefault(metric, []).append(
                    {"metricName": metric, "metricValue": value, "step": None, "timestamp": now}
                )
            exp.others.update({"Name": name, **(others or {})})
            exp.params.update(params or {})
            return exp

    def add_model_version(
        self, name: str, version: str, exp: FakeExperiment, *, status: str = "Production", comment: str = ""
    ) -> ModelItem:
        """Seed a registered version of ``name`` made from ``exp`` (as if another machine had registered it)."""
        with self.lock:
            asset = Asset(uuid.uuid4().hex, "model.keras", b"PK", "model-element", grouping_name=name)
            exp.assets.append(asset)
            model = self.models.get(name)
            if model is None:
                model = self.models[name] = RegistryModel(uuid.uuid4().hex, name, self.workspace, None)
            item = ModelItem(uuid.uuid4().hex, version, exp.key, name, status, [], comment, [asset.asset_id])
            model.items[version] = item
            return item

    # ------------------------------------------------------------------ helpers
    def _new_experiment(self, key: str, workspace: str, project: str, offline: bool) -> FakeExperiment:
        project_id = self.projects.setdefault(project, uuid.uuid4().hex)
        exp = FakeExperiment(key, workspace, project, project_id, run_id=uuid.uuid4().hex, offline=offline)
        self.experiments[key] = exp
        return exp

    def _experiment(self, key: Any, *, status: int = 400) -> FakeExperiment:
        if isinstance(key, list):
            key = key[0] if key else None
        if not isinstance(key, str) or key not in self.experiments or key in self.deleted:
            raise HttpError(status, f"experiment {key!r} not found", NO_WRITE_ACCESS_TO_EXPERIMENT)
        return self.experiments[key]

    @staticmethod
    def _require(body: Any, *keys: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        missing = [k for k in keys if k not in body]
        if missing:
            raise HttpError(400, f"missing field(s): {', '.join(missing)}")
        return body

    @staticmethod
    def _param(rec: Recorded, *names: str) -> list[str]:
        missing = [n for n in names if not rec.query.get(n)]
        if missing:
            raise HttpError(400, f"missing query parameter(s): {', '.join(missing)}")
        return [rec.query[n] for n in names]

    def _model(self, workspace: str, name: str) -> RegistryModel:
        model = self.models.get(name)
        if model is None or model.workspace != workspace:
            raise HttpError(404, f"registry model {workspace}/{name} not found")
        return model

    def _item(self, model: RegistryModel, version: str) -> ModelItem:
        if version not in model.items:
            raise HttpError(404, f"version {version} of {model.name} not found")
        return model.items[version]

    def _item_by_id(self, item_id: Any) -> tuple[RegistryModel, ModelItem]:
        for model in self.models.values():
            for item in model.items.values():
                if item.item_id == item_id:
                    return model, item
        raise HttpError(400, f"model item {item_id!r} not found")

    def _item_details(self, model: RegistryModel, item: ModelItem) -> dict[str, Any]:
        return {
            "registryModelItemId": item.item_id,
            "registryModelId": model.model_id,
            "version": item.version,
            "status": item.status,
            "tags": list(item.tags),
            "stages": list(item.tags),
            "comment": item.comment,
            "experimentKey": item.experiment_key,
            "experimentModel": {"experimentModelName": item.experiment_model_name},
            "createdAt": item.created_at,
            "lastUpdated": item.updated_at,
            "userName": "fake-user",
        }

    # ------------------------------------------------------------------ routes
    def _register_routes(self) -> None:
        c, r = "/clientlib/", "/api/rest/v2/"
        routes: dict[str, dict[str, Callable[[Recorded], Any]]] = {
            c + "isAlive/ver": {"GET": lambda rec: {"version": self.backend_version}},
            r + "isAlive/ver": {"GET": lambda rec: {"version": self.backend_version}},
            c + "health/ping": {"GET": lambda rec: {"status": "ok"}},
            c + "logger/add/run": {"POST": self._add_run},
            c + "logger/get/run": {"POST": self._get_run},
            c + "asset/3d-limits": {"POST": self._3d_limits},
            c + "status-report/update": {"POST": self._status_update},
            c + "status-report/offline-metadata": {"POST": self._offline_metadata},
            c + "tags/add-tags-to-experiment": {"POST": self._add_tags},
            c + "batch/logger/experiment/parameter": {"POST": self._parameter_batch},
            c + "batch/logger/experiment/metric": {"POST": self._metric_batch},
            c + "asset/upload": {"POST": self._upload},
            c + "visualizations/upload": {"POST": self._upload},
            c + "notification/experiment": {"POST": self._notification},
            r + "write/experiment/update-status": {"POST": self._rest_update_status},
            r + "write/experiment/log-other": {"POST": self._log_other},
            r + "write/experiment/log-parameter": {"POST": self._log_parameter},
            r + "write/experiment/log-metric": {"POST": self._log_metric},
            r + "write/experiment/delete": {"GET": self._delete_experiment},
            r + "experiment/metadata": {"GET": self._metadata},
            r + "experiments": {"GET": self._list_experiments},
            r + "project/column-names": {"GET": self._column_names},
            r + "project/query": {"POST": self._query_project},
            r + "experiments/multi-metric-chart": {"POST": self._multi_metric_chart},
            r + "experiment/metrics/summary": {"GET": self._metrics_summary},
            r + "experiment/metrics/get-metric": {"GET": self._get_metric},
            r + "experiment/log-other": {"GET": self._others_summary},
            r + "experiment/parameters": {"GET": self._parameters_summary},
            r + "experiment/tags": {"GET": self._get_tags},
            r + "experiment/asset/list": {"GET": self._asset_list},
            r + "experiment/asset/get-asset": {"GET": self._get_asset},
            r + "registry-model/compact-details": {"GET": self._compact_details},
            r + "registry-model/details": {"GET": self._model_details},
            r + "registry-model/items": {"GET": self._items},
            r + "registry-model/item/details": {"GET": self._item_details_route},
            r + "registry-model/item/download-instructions": {"GET": self._download_instructions},
            r + "registry-model/allowed_status_values": {"GET": self._allowed_statuses},
            r + "write/registry-model/item/create": {"POST": self._create_item},
            r + "write/registry-model/item/status": {"POST": self._set_item_status},
            r + "write/registry-model/item/stage": {"GET": self._add_item_tag},
            r + "write/registry-model/item/stage/delete": {"GET": self._delete_item_tag},
        }
        self._routes = routes

    def dispatch(self, rec: Recorded, auth: str | None) -> tuple[int, Any]:
        """Route one request; returns (status, JSON-able body or raw bytes)."""
        methods = self._routes.get(rec.path)
        if methods is None:
            raise HttpError(404, f"no route {rec.path}")
        handler = methods.get(rec.method)
        if handler is None:
            raise HttpError(405, f"{rec.method} not allowed on {rec.path}")
        handshake = rec.path.endswith(("logger/add/run", "logger/get/run"))
        public = rec.path.endswith(("isAlive/ver", "health/ping"))
        if handshake:
            # The SDK only understands an auth failure of the handshake as 400 + sdk_error_code.
            body = self._require(rec.body, "apiKey")
            if body["apiKey"] != self.api_key:
                raise HttpError(400, "api key not registered", API_KEY_NOT_REGISTERED)
        elif not public and auth != self.api_key:
            raise HttpError(401, "invalid or missing API key")
        rec.authorized = True
        fault = self._fault_for(rec.path)
        if fault is not None and not fault[1]:
            raise HttpError(fault[0], "injected fault")
        with self.lock:
            result = handler(rec)
        if fault is not None:
            raise HttpError(fault[0], "injected fault (the request was saved)")
        return 200, result

    # --- clientlib
    def _add_run(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey", "projectName", "teamName", "offline")
        key = body["experimentKey"]
        if not isinstance(key, str) or not EXPERIMENT_KEY.match(key):
            raise HttpError(400, f"invalid experiment key {key!r}")
        workspace = body["teamName"] or self.workspace
        if workspace != self.workspace:
            raise HttpError(400, f"workspace {workspace!r} does not exist", NON_EXISTING_TEAM)
        project = body["projectName"] or "general"
        if key in self.experiments:
            if body.get("getOrCreateEnabled"):
                exp = self.experiments[key]
            else:
                raise HttpError(400, f"experiment {key} already exists", EXPERIMENT_ALREADY_EXISTS)
        else:
            exp = self._new_experiment(key, workspace, project, bool(body["offline"]))
        return self._handshake(exp)

    def _get_run(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "previousExperiment")
        exp = self._experiment(body["previousExperiment"])
        exp.alive = True
        return self._handshake(exp)

    def _handshake(self, exp: FakeExperiment) -> dict[str, Any]:
        return {
            "runId": exp.run_id,
            "project_id": exp.project_id,
            "focusUrl": None if self.no_url else f"{self.root}{exp.workspace}/{exp.project}/",
            "lastOffset": 0,
            "githubEnabled": False,
            "featureToggles": [],
            "name": exp.name,
        }

    def _3d_limits(self, rec: Recorded) -> dict[str, Any]:
        self._experiment(self._require(rec.body, "experimentKey")["experimentKey"])
        return {"maxPoints": 1000000, "maxBoxes": 250000}

    def _status_update(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey", "runId", "is_alive")
        exp = self._experiment(body["experimentKey"])
        if body["runId"] != exp.run_id:
            raise HttpError(400, "runId does not match the experiment")
        exp.alive = bool(body["is_alive"])
        if not exp.alive:
            exp.end_ms = int(time.time() * 1000)
        return {
            "is_alive_beat_duration_millis": 10000,
            "gpu_monitor_interval_millis": 60000,
            "cpu_monitor_interval_millis": 68000,
            "pending_rpcs": False,
        }

    def _offline_metadata(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey")
        exp = self._experiment(body["experimentKey"])
        exp.alive = False
        if body.get("startTimestamp"):
            exp.start_ms = int(body["startTimestamp"])
        exp.end_ms = int(body.get("endTimestamp") or time.time() * 1000)
        return {}

    def _add_tags(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey", "addedTags")
        if not isinstance(body["addedTags"], list) or not all(isinstance(t, str) for t in body["addedTags"]):
            raise HttpError(400, "addedTags must be a list of strings")
        exp = self._experiment(body["experimentKey"])
        exp.tags.extend(t for t in body["addedTags"] if t not in exp.tags)
        return {}

    def _batch_values(self, rec: Recorded, *keys: str) -> tuple[FakeExperiment, list[dict[str, Any]]]:
        body = self._require(rec.body, "experimentKey", "values")
        exp = self._experiment(body["experimentKey"])
        values = body["values"]
        if not isinstance(values, list) or not values:
            raise HttpError(400, "values must be a non-empty list")
        for item in values:
            self._require(item, *keys)
        return exp, values

    def _parameter_batch(self, rec: Recorded) -> dict[str, Any]:
        exp, values = self._batch_values(rec, "parameterName", "parameterValue")
        for item in values:
            exp.params[item["parameterName"]] = item["parameterValue"]
        return {}

    def _metric_batch(self, rec: Recorded) -> dict[str, Any]:
        exp, values = self._batch_values(rec, "metricName", "metricValue")
        for item in values:
            exp.metrics.setdefault(item["metricName"], []).append(item)
        return {}

    def _upload(self, rec: Recorded) -> dict[str, Any]:
        (exp_key,) = self._param(rec, "experimentId")
        exp = self._experiment(exp_key)
        if not isinstance(rec.body, dict) or "file" not in rec.body:
            raise HttpError(400, "multipart field 'file' missing")
        q = rec.query
        name = q.get("fileName") or q.get("figName")
        if not name:
            raise HttpError(400, "fileName or figName is required")
        asset_id = q.get("assetId") or q.get("imageId") or uuid.uuid4().hex
        kind = q.get("type") or ("image" if rec.path.endswith("visualizations/upload") else "asset")
        if kind == "model-element" and not q.get("groupingName"):
            raise HttpError(400, "model elements need a groupingName")
        step = int(q["step"]) if q.get("step") not in (None, "", "None") else None
        exp.assets = [a for a in exp.assets if not (q.get("overwrite") == "True" and a.file_name == name)]
        exp.assets.append(
            Asset(asset_id, name, rec.body["file"], kind, step, q.get("groupingName"), rec.body.get("metadata"))
        )
        return {"assetId": asset_id, "web": f"{self.root}asset/{asset_id}", "api": f"{self.root}api/asset/{asset_id}"}

    def _notification(self, rec: Recorded) -> dict[str, Any]:
        self._experiment(self._require(rec.body, "experiment_key")["experiment_key"])
        return {}

    # --- REST v2 (experiments)
    def _rest_update_status(self, rec: Recorded) -> dict[str, Any]:
        self._experiment(self._require(rec.body, "experimentKey")["experimentKey"])
        return {}

    def _log_other(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey", "key", "value")
        exp = self._experiment(body["experimentKey"])
        exp.others[str(body["key"])] = str(body["value"])
        if body["key"] == "Name":
            exp.name = str(body["value"])
        return {}

    def _log_parameter(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey", "parameterName", "parameterValue")
        self._experiment(body["experimentKey"]).params[body["parameterName"]] = body["parameterValue"]
        return {}

    def _log_metric(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "experimentKey", "metricName", "metricValue")
        self._experiment(body["experimentKey"]).metrics.setdefault(body["metricName"], []).append(body)
        return {}

    def _delete_experiment(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        self._experiment(key)
        self.deleted.append(key)
        return {"msg": "deleted"}

    def _metadata(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        return self._experiment(key, status=404).metadata()

    def _list_experiments(self, rec: Recorded) -> dict[str, Any]:
        workspace, project = self._param(rec, "workspaceName", "projectName")
        if workspace != self.workspace:
            raise HttpError(400, f"workspace {workspace!r} does not exist")
        if project not in self.projects:
            raise HttpError(404, f"project {workspace}/{project} not found")
        return {"experiments": [e.metadata() for e in self.project_experiments(project)]}

    # --- REST v2 (multi-experiment reads)
    def _project_of(self, workspace: Any, project: Any) -> list[FakeExperiment]:
        if not isinstance(workspace, str) or workspace != self.workspace:
            raise HttpError(400, f"workspace {workspace!r} does not exist")
        if not isinstance(project, str) or project not in self.projects:
            raise HttpError(404, f"project {workspace}/{project} not found")
        return self.project_experiments(project)

    @staticmethod
    def _columns_of(exp: FakeExperiment) -> dict[tuple[str, str], Any]:
        """(source, name) -> current value, for every queryable column of ``exp``."""
        out: dict[tuple[str, str], Any] = {}
        for name, points in exp.metrics.items():
            if points:
                out[("metrics", name)] = points[-1]["metricValue"]
        out.update({("params", k): v for k, v in exp.params.items()})
        out.update({("log_other", k): v for k, v in exp.others.items()})
        out.update({("tag", t): t for t in exp.tags})
        return out  # no metadata or env_details columns: a query on them matches nothing here

    @staticmethod
    def _qtype(values: list[Any]) -> str:
        try:
            [float(v) for v in values]
        except (TypeError, ValueError):
            return "string"
        return "double"

    def _column_names(self, rec: Recorded) -> dict[str, Any]:
        workspace, project = self._param(rec, "workspaceName", "projectName")
        seen: dict[tuple[str, str], list[Any]] = {}
        for exp in self._project_of(workspace, project):
            for column, value in self._columns_of(exp).items():
                seen.setdefault(column, []).append(value)
        columns = []
        for (source, name), values in sorted(seen.items()):
            qtype = "string" if source == "tag" else self._qtype(values)
            columns.append({"name": name, "source": source, "type": qtype})
        return {"columns": columns}

    def _rule_matches(self, rule: Any, source: str, columns: dict[tuple[str, str], Any]) -> bool:
        if not isinstance(rule, dict):
            raise HttpError(400, "a rule must be a JSON object")
        if "condition" in rule:  # a nested group
            return self._group_matches(rule, source, columns)
        if "source" in rule:
            source = rule["source"]
        for key in ("id", "field", "type", "operator", "value"):
            if key not in rule:
                raise HttpError(400, f"rule missing {key!r}")
        if source not in QUERY_SOURCES:
            raise HttpError(400, f"unknown query source {source!r}")
        if rule["type"] not in QUERY_TYPES:
            raise HttpError(400, f"unknown rule type {rule['type']!r}")
        op, want = rule["operator"], rule["value"]
        if op not in QUERY_OPERATORS:
            raise HttpError(400, f"unknown operator {op!r}")
        have = columns.get((source, str(rule["field"])))
        if op in ("is_null", "is_not_null"):
            return (have is None) == (op == "is_null")
        if op in ("is_empty", "is_not_empty"):
            return (have == "") == (op == "is_empty")
        if have is None:
            return False  # SQL-like: a missing value matches no comparison, not even not_equal
        if rule["type"] in ("double", "timenumber") and op not in ("contains", "not_contains"):
            try:
                a: Any = float(have)
                b: Any = [float(x) for x in want] if op.endswith("between") else float(want)
            except (TypeError, ValueError):
                raise HttpError(400, f"value {want!r} is not a number for {rule['field']!r}") from None
        else:
            a, b = str(have), want if op.endswith("between") else str(want)
        checks: dict[str, Callable[[], bool]] = {
            "equal": lambda: a == b,
            "not_equal": lambda: a != b,
            "less": lambda: a < b,
            "less_or_equal": lambda: a <= b,
            "greater": lambda: a > b,
            "greater_or_equal": lambda: a >= b,
            "between": lambda: b[0] <= a <= b[1],
            "not_between": lambda: not b[0] <= a <= b[1],
            "contains": lambda: str(b) in str(a),
            "not_contains": lambda: str(b) not in str(a),
            "begins_with": lambda: str(a).startswith(str(b)),
            "not_begins_with": lambda: not str(a).startswith(str(b)),
            "ends_with": lambda: str(a).endswith(str(b)),
            "not_ends_with": lambda: not str(a).endswith(str(b)),
        }
        return checks[op]()

    def _group_matches(self, query: Any, source: str, columns: dict[tuple[str, str], Any]) -> bool:
        if not isinstance(query, dict) or query.get("condition") not in ("AND", "OR"):
            raise HttpError(400, "a query needs condition AND or OR")
        rules = query.get("rules")
        if not isinstance(rules, list) or not rules:
            raise HttpError(400, "a query needs a non-empty list of rules")
        results = [self._rule_matches(r, source, columns) for r in rules]
        return all(results) if query["condition"] == "AND" else any(results)

    def _query_project(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "workspaceName", "projectName", "predicates", "archived")
        predicates = body["predicates"]
        if not isinstance(predicates, list) or not predicates:
            raise HttpError(400, "predicates must be a non-empty list")
        if not isinstance(body["archived"], bool):
            raise HttpError(400, "archived must be a boolean")
        experiments = self._project_of(body["workspaceName"], body["projectName"])
        for pred in predicates:
            self._require(pred, "source", "query")
            if pred.get("negated"):
                # What the service does with this flag is not documented: refuse rather than guess.
                raise HttpError(400, "the fake does not implement negated predicates")
        keys = []
        for exp in [] if body["archived"] else experiments:  # the fake archives nothing
            columns = self._columns_of(exp)
            if all(self._group_matches(p["query"], p["source"], columns) for p in predicates):
                keys.append(exp.key)
        return {"experimentKeys": keys}

    def _multi_metric_chart(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "targetedExperiments", "metrics", "params", "independentMetrics", "fetchFull")
        keys, metrics, params = body["targetedExperiments"], body["metrics"], body["params"]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise HttpError(400, "targetedExperiments must be a non-empty list of experiment keys")
        if len(keys) > MULTI_METRIC_MAX_EXPERIMENTS:
            raise HttpError(400, f"at most {MULTI_METRIC_MAX_EXPERIMENTS} experiments per request, got {len(keys)}")
        if not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics):
            raise HttpError(400, "metrics must be a list of metric names")
        if params is not None and (not isinstance(params, list) or not all(isinstance(p, str) for p in params)):
            raise HttpError(400, "params must be null or a list of parameter names")
        if not metrics and not params:
            raise HttpError(400, "ask for at least one metric or parameter")
        if not isinstance(body["independentMetrics"], bool) or not isinstance(body["fetchFull"], bool):
            raise HttpError(400, "independentMetrics and fetchFull must be booleans")
        out: dict[str, Any] = {}
        for key in keys:
            exp = self._experiment(key, status=400)
            series = []
            for name in metrics:
                points = exp.metrics.get(name) or []
                if not points:
                    continue
                series.append(
                    {
                        "metricName": name,
                        # Strings, as the summaries: callers must parse them.
                        "values": [str(p["metricValue"]) for p in points],
                        "steps": [p.get("step") for p in points],
                        "epochs": [p.get("epoch") for p in points],
                        "timestamps": [p.get("timestamp") or 0 for p in points],
                        "durations": [0 for _ in points],
                    }
                )
            out[key] = {
                "experimentKey": key,
                "experimentName": exp.name,
                "metrics": series,
                "params": None if params is None else {p: exp.params.get(p) for p in params if p in exp.params},
            }
        return {"experiments": out, "empty": not any(v["metrics"] for v in out.values())}

    def _metrics_summary(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        exp = self._experiment(key, status=404)
        values = []
        for name, points in exp.metrics.items():
            series = [(p["metricValue"], p.get("step"), p.get("timestamp") or 0) for p in points]
            values.append({"name": name, **_summary(series)})
        return {"values": values}

    def _get_metric(self, rec: Recorded) -> dict[str, Any]:
        key, name = self._param(rec, "experimentKey", "metricName")
        exp = self._experiment(key, status=404)
        points = [
            {
                "metricName": name,
                "metricValue": str(p["metricValue"]),
                "step": p.get("step"),
                "epoch": p.get("epoch"),
                "timestamp": p.get("timestamp") or 0,
                "runContext": None,
                "offset": i,
            }
            for i, p in enumerate(exp.metrics.get(name, []))
        ]
        return {"metrics": points}

    def _others_summary(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        exp = self._experiment(key, status=404)
        now = exp.start_ms
        return {"values": [{"name": k, **_summary([(v, None, now)])} for k, v in exp.others.items()]}

    def _parameters_summary(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        exp = self._experiment(key, status=404)
        return {"values": [{"name": k, **_summary([(v, None, exp.start_ms)])} for k, v in exp.params.items()]}

    def _get_tags(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        return {"tags": list(self._experiment(key, status=404).tags)}

    def _asset_json(self, exp: FakeExperiment, a: Asset) -> dict[str, Any]:
        link = f"{self.root}api/rest/v2/experiment/asset/get-asset?" + urlencode(
            {"assetId": a.asset_id, "experimentKey": exp.key}
        )
        return {
            "assetId": a.asset_id,
            "fileName": a.file_name,
            "fileSize": len(a.data),
            "type": a.type,
            "step": a.step,
            "link": link,
            "remote": False,
            "metadata": a.metadata,
            "createdAt": a.created_at,
            "dir": f"models/{a.grouping_name}" if a.grouping_name else "assets",
            "experimentKey": exp.key,
        }

    def _asset_list(self, rec: Recorded) -> dict[str, Any]:
        (key,) = self._param(rec, "experimentKey")
        exp = self._experiment(key, status=404)
        return {"assets": [self._asset_json(exp, a) for a in exp.assets]}

    def _get_asset(self, rec: Recorded) -> bytes:
        key, asset_id = self._param(rec, "experimentKey", "assetId")
        exp = self._experiment(key, status=404)
        for a in exp.assets:
            if a.asset_id == asset_id:
                return a.data
        raise HttpError(404, f"asset {asset_id} not found")

    # --- REST v2 (registry)
    def _compact_details(self, rec: Recorded) -> dict[str, Any]:
        workspace, name = self._param(rec, "workspaceName", "modelName")
        model = self._model(workspace, name)
        return {"registryModelId": model.model_id, "modelName": model.name}

    def _model_details(self, rec: Recorded) -> dict[str, Any]:
        workspace, name = self._param(rec, "workspaceName", "modelName")
        model = self._model(workspace, name)
        return {
            "registryModelId": model.model_id,
            "modelName": model.name,
            "description": model.description,
            "versions": [self._item_details(model, i) for i in model.items.values()],
        }

    def _items(self, rec: Recorded) -> dict[str, Any]:
        workspace, name = self._param(rec, "workspaceName", "modelName")
        model = self._model(workspace, name)
        items = list(model.items.values())
        if rec.query.get("status"):
            items = [i for i in items if i.status == rec.query["status"]]
        if rec.query.get("tag"):
            items = [i for i in items if rec.query["tag"] in i.tags]
        prefix = rec.query.get("versionPrefix") or ""
        items = [i for i in items if i.version.startswith(prefix)]
        items.sort(key=lambda i: tuple(int(p) for p in i.version.split(".")), reverse=True)
        return {"items": [self._item_details(model, i) for i in items]}

    def _item_details_route(self, rec: Recorded) -> dict[str, Any]:
        workspace, name, version = self._param(rec, "workspaceName", "modelName", "version")
        model = self._model(workspace, name)
        return self._item_details(model, self._item(model, version))

    def _download_instructions(self, rec: Recorded) -> dict[str, Any]:
        workspace, name, version = self._param(rec, "workspaceName", "modelName", "version")
        model = self._model(workspace, name)
        item = self._item(model, version)
        exp = self._experiment(item.experiment_key, status=404)
        assets = [self._asset_json(exp, a) for a in exp.assets if a.asset_id in item.asset_ids]
        return {"s3DownloadEnabled": False, "versions": [{"version": version, "assets": assets}]}

    def _allowed_statuses(self, rec: Recorded) -> dict[str, Any]:
        (workspace,) = self._param(rec, "workspaceName")
        if workspace != self.workspace:
            raise HttpError(400, f"workspace {workspace!r} does not exist")
        return {"allowedStatus": list(ALLOWED_STATUSES)}

    def _create_item(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(
            rec.body, "experimentKey", "experimentModelName", "registryModelName", "version", "status", "tags"
        )
        exp = self._experiment(body["experimentKey"])
        model_assets = exp.models().get(body["experimentModelName"])
        if not model_assets:
            raise HttpError(400, f"experiment has no model named {body['experimentModelName']!r}")
        version = body["version"]
        if not isinstance(version, str) or not SEMVER.match(version):
            raise HttpError(400, f"invalid version string {version!r}", INVALID_VERSION_STRING)
        status = body["status"] if body["status"] is not None else "None"
        if status not in ALLOWED_STATUSES:
            raise HttpError(400, f"status {status!r} not in {ALLOWED_STATUSES}")
        tags = body["tags"] or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise HttpError(400, "tags must be a list of strings")
        name = body["registryModelName"]
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = RegistryModel(
                uuid.uuid4().hex, name, exp.workspace, body.get("registryModelDescription")
            )
        if version in model.items:
            raise HttpError(400, f"version {version} of {name} already exists")
        item = ModelItem(
            uuid.uuid4().hex,
            version,
            exp.key,
            body["experimentModelName"],
            status,
            list(tags),
            body.get("versionComment") or "",
            [a.asset_id for a in model_assets],
        )
        model.items[version] = item
        return {"registryModelId": model.model_id, "registryModelItemId": item.item_id}

    def _set_item_status(self, rec: Recorded) -> dict[str, Any]:
        body = self._require(rec.body, "status", "modelItemId")
        if body["status"] not in ALLOWED_STATUSES:
            raise HttpError(400, f"status {body['status']!r} not in {ALLOWED_STATUSES}")
        _model, item = self._item_by_id(body["modelItemId"])
        item.status = body["status"]
        item.updated_at = int(time.time() * 1000)
        return {}

    def _add_item_tag(self, rec: Recorded) -> dict[str, Any]:
        item_id, tag = self._param(rec, "modelItemId", "stage")
        _model, item = self._item_by_id(item_id)
        if tag not in item.tags:
            item.tags.append(tag)
        return {}

    def _delete_item_tag(self, rec: Recorded) -> dict[str, Any]:
        item_id, tag = self._param(rec, "modelItemId", "stage")
        _model, item = self._item_by_id(item_id)
        if tag not in item.tags:
            raise HttpError(400, f"version has no tag {tag!r}")
        item.tags.remove(tag)
        return {}

    # ------------------------------------------------------------------ request plumbing
    def next_request(self) -> bool:
        """Count a request; False once the server has gone down (drop the connection)."""
        with self.lock:
            if self.down:
                return False
            if self.drop_after is not None and len(self.requests) >= self.drop_after:
                self.go_down()
                return False
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each keep-alive reply waited for the
    # client's delayed ACK (about 40 ms a request), a stall no real server adds.
    disable_nagle_algorithm = True
    server_fake: FakeComet

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output clean
        pass

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") == "gzip":
            try:
                raw = gzip.decompress(raw)
            except OSError as exc:
                raise HttpError(400, "bad gzip body") from exc
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
            )
            if not msg.is_multipart():
                raise HttpError(400, "malformed multipart body")
            fields: dict[str, Any] = {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True) or b""
                fields[str(name)] = payload if name == "file" else payload.decode("utf-8", "replace")
            return fields
        if not raw:
            return None
        if ctype.split(";")[0].strip() != "application/json":
            raise HttpError(400, f"unexpected Content-Type {ctype!r}")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HttpError(400, "body is not valid JSON") from exc

    def _handle(self) -> None:
        fake = self.server_fake
        if not fake.next_request():
            self._drop()
            return
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        rec = Recorded(self.command, parts.path, query, None)
        with fake.lock:
            fake.requests.append(rec)
        try:
            rec.body = self._read_body()
            status, payload = fake.dispatch(rec, self.headers.get("Authorization"))
        except HttpError as err:
            status, payload = err.status, err.body
        rec.status = status
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def refused_url() -> str:
    """A ``COMET_URL_OVERRIDE`` on a loopback port with no listener (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/clientlib/"


class SilentServer:
    """Accepts TCP connections and never answers (a hung proxy or server)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._conns.append(conn)

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._conns:
            conn.close()
        self._sock.close()

    @property
    def url_override(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/clientlib/"
