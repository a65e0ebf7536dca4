"""A real ``mlflow server`` behind a guard that lets through only GitLab's documented MLflow subset.

:class:`MlflowServer` starts ``mlflow server`` (SQLite backend store, served
artifacts under a folder, one worker) on a free loopback port.
:class:`Guard` is a threaded HTTP proxy in front of it that forwards only the
endpoints GitLab documents ("MLflow client compatibility", gitlab-org/gitlab's
``doc/user/project/ml/experiment_tracking/mlflow_client.md``) plus GET/PUT of single files at a run's
artifact root, and answers 404 ``ENDPOINT_NOT_FOUND`` to everything else, as
GitLab would, recording it in :attr:`Guard.refused` (tests assert it stays empty).
It also checks the bearer token, as GitLab does, and GitLab's stricter rules:
``runs/search`` takes one experiment id; artifacts live at the run's root only.
With :attr:`Guard.prefix` set (``/api/v4/projects/<id>/ml/mlflow``), it serves only
under that path, as GitLab does, and asks the server behind it without the prefix.

Faults: :meth:`Guard.fail` (an error answer, optionally after forwarding: the
server saved it, the client sees the error), :meth:`Guard.down` / :meth:`Guard.up`
(down for every client: new connections refused, kept-alive ones cut, a request
caught in the guard dropped unforwarded), :meth:`Guard.slow`.

GitLab's run tags are create-only (``candidate.metadata.create!``): the guard
answers ``runs/set-tag`` of a key the run already has with 400 (even for the same
value), recorded in :attr:`Guard.tag_conflicts`, and drops from ``runs/log-batch``
the tags whose keys the run has (silently, as GitLab skips duplicates), recorded in
:attr:`Guard.skipped_tags`. ``create_only = False`` gives MLflow's overwrite.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: (method, endpoint under /api/2.0/mlflow/) GitLab documents
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "experiments/create"),
        ("GET", "experiments/get"),
        ("GET", "experiments/get-by-name"),
        ("POST", "experiments/delete"),
        ("GET", "runs/get"),
        ("POST", "runs/delete"),
        ("POST", "runs/create"),
        ("POST", "runs/search"),
        ("POST", "runs/log-batch"),
        ("POST", "runs/log-metric"),
        ("POST", "runs/log-parameter"),
        ("POST", "runs/set-tag"),
        ("POST", "runs/update"),
        ("POST", "registered-models/create"),
        ("GET", "registered-models/get"),
        ("DELETE", "registered-models/delete"),
        ("PATCH", "registered-models/update"),
        ("POST", "model-versions/create"),
        ("GET", "model-versions/get"),
        ("PATCH", "model-versions/update"),
        ("POST", "registered-models/get-latest-versions"),
    }
)
API = "/api/2.0/mlflow/"
#: a file at a run's artifact root: <experiment id>/<run id>/artifacts/<name>, nothing deeper
ARTIFACT = re.compile(r"^/api/2\.0/mlflow-artifacts/artifacts/[^/]+/[^/]+/artifacts/[^/]+$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "host"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on a free loopback port, its store and artifacts under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.db = self.root / "mlflow.db"
        self.artifacts = self.root / "artifacts"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(exe), "server", "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination",
            str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        if getattr(self, "log", None):
            self.log.close()


@dataclass
class Fault:
    needle: str
    status: int
    times: int
    saved: bool
    retry_after: float | None
    code: str = "TEMPORARILY_UNAVAILABLE"


class Guard:
    """The GitLab-subset proxy in front of an :class:`MlflowServer` (see the module docstring)."""

    def __init__(self, backend_port: int, token: str | None = None) -> None:
        self.backend_port = backend_port
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.refused: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str]] = []
        #: (method, path, decoded JSON body) of every /api/2.0/mlflow/ request with a JSON body
        self.bodies: list[tuple[str, str, Any]] = []
        self.faults: list[Fault] = []
        self.delay = 0.0
        #: GitLab's create-only tags (see the module docstring)
        self.create_only = True
        #: GitLab serves its MLflow API under the project's path ("/api/v4/projects/<id>/ml/mlflow");
        #: "" is a plain MLflow server. With a prefix, a request outside it is refused.
        self.prefix = ""
        #: (run id, key, value) of a runs/set-tag refused because the run had the key
        self.tag_conflicts: list[tuple[str, str, str]] = []
        #: (run id, key, value, value kept) dropped from a runs/log-batch because the run had the key
        self.skipped_tags: list[tuple[str, str, str, str]] = []
        #: one tag write at a time, as GitLab's unique index serialises create!
        self._tags_lock = threading.Lock()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        #: bumped by down(): a request that started before it is dropped, never forwarded or answered
        self._epoch = 0
        self._busy = 0
        self._idle = threading.Condition()

    # -- control -------------------------------------------------------------------------

    def up(self) -> "Guard":
        if self._server is not None:
            return self
        guard = self

        class Handler(_Handler):
            owner = guard

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True

            def get_request(self) -> Any:
                conn, addr = super().get_request()
                guard._conns.add(conn)  # closed by down(): a server that goes away drops kept-alive connections
                return conn, addr

        for _ in range(50):  # the old socket may linger a moment after down()
            try:
                server = Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"guard could not listen again on {self.port}")
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Down for every client until :meth:`up`: new connections refused, open ones cut, none forwarded."""
        with self._lock:
            self._epoch += 1
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conns.clear()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no request is inside the guard (e.g. one held by :meth:`slow` when it went down)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def reset(self, token: str | None = None) -> None:
        with self._lock:
            self.faults.clear()
            self.refused.clear()
            self.requests.clear()
            self.bodies.clear()
            self.tag_conflicts.clear()
            self.skipped_tags.clear()
            self.create_only = True
            self.prefix = ""
            self.delay = 0.0
            self.token = token
        self.up()

    def fail(
        self, needle: str, status: int = 503, times: int = 1, saved: bool = False, retry_after: float | None = None,
        code: str = "TEMPORARILY_UNAVAILABLE",
    ) -> None:
        """The next ``times`` requests whose path contains ``needle`` get ``status`` (after forwarding if ``saved``)."""
        with self._lock:
            self.faults.append(Fault(needle, status, times, saved, retry_after, code))

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    def sent(self, endpoint: str) -> list[Any]:
        """JSON bodies sent to ``endpoint`` (e.g. ``runs/log-batch``), in order."""
        return [b for _, p, b in list(self.bodies) if p == API + endpoint]

    def lost_overwrites(self) -> list[tuple[str, str, str, str]]:
        """Skipped log-batch tags whose value differed from the kept one: writes GitLab silently loses."""
        return [s for s in list(self.skipped_tags) if s[2] != s[3]]

    def count(self, method: str, needle: str) -> int:
        """How many ``method`` requests with ``needle`` in their path were seen."""
        return sum(1 for m, p in list(self.requests) if m == method and needle in p)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.needle in path and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # -- rules ---------------------------------------------------------------------------

    def verdict(self, method: str, path: str, body: bytes, headers: Any) -> tuple[int, str, str] | None:
        """None when GitLab would serve the request, else (status, error code, why)."""
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, "UNAUTHENTICATED", "missing or wrong bearer token"
        if path.startswith(API):
            endpoint = path[len(API):]
            if (method, endpoint) not in ALLOWED:
                return 404, "ENDPOINT_NOT_FOUND", f"{method} {endpoint} is not in GitLab's subset"
            if endpoint == "runs/search":
                try:
                    ids = json.loads(body or b"{}").get("experiment_ids") or []
                except ValueError:
                    ids = []
                if len(ids) != 1:
                    return 400, "INVALID_PARAMETER_VALUE", "GitLab searches exactly one experiment id"
            return None
        if method in ("GET", "PUT") and ARTIFACT.match(path):
            return None
        return 404, "ENDPOINT_NOT_FOUND", f"{method} {path} is not in GitLab's subset"


class _Handler(BaseHTTPRequestHandler):
    owner: Guard
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def finish(self) -> None:
        super().finish()
        self.owner._conns.discard(self.connection)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        guard = self.owner
        with guard._idle:
            guard._busy += 1
        try:
            self._handle_counted()
        finally:
            with guard._idle:
                guard._busy -= 1
                guard._idle.notify_all()

    def _gone(self, epoch: int) -> bool:
        """True (and the connection dropped) when the guard went down since this request arrived."""
        if self.owner._epoch == epoch and self.owner.is_up:
            return False
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def _handle_counted(self) -> None:
        guard = self.owner
        epoch = guard._epoch
        method = self.command
        body = self._body()
        if guard.prefix:
            if not urlsplit(self.path).path.startswith(guard.prefix + "/"):
                guard.refused.append((method, self.path, f"not under {guard.prefix}"))
                self._answer(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"not under {guard.prefix}"})
                return
            self.path = self.path[len(guard.prefix):]  # what the MLflow server behind it is asked
        path = urlsplit(self.path).path
        guard.requests.append((method, path))
        if path.startswith(API) and body:
            try:
                guard.bodies.append((method, path, json.loads(body)))
            except ValueError:
                pass
        if guard.delay:
            time.sleep(guard.delay)
        if self._gone(epoch):  # a server that went away neither saves nor answers what was under way
            return
        refused = guard.verdict(method, path, body, self.headers)
        if refused is not None:
            status, code, why = refused
            guard.refused.append((method, self.path, why))
            self._answer(status, {"error_code": code, "message": why})
            return
        fault = guard._take_fault(self.path)
        if fault is not None and not fault.saved:
            self._fault(fault)
            return
        endpoint = path[len(API):] if path.startswith(API) else ""
        if guard.create_only and method == "POST" and endpoint in ("runs/set-tag", "runs/log-batch"):
            with guard._tags_lock:
                answer = self._create_only(endpoint, body)
                if answer is None:
                    return
                status, headers, data = answer
        else:
            status, headers, data = self._forward(method, body)
        if self._gone(epoch):
            return
        if fault is not None:
            self._fault(fault)
            return
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _existing_tags(self, run_id: str) -> dict[str, str] | None:
        """The tag keys the upstream run has, or None when it cannot be read (the request goes as it is)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.owner.backend_port, timeout=120)
        try:
            conn.request("GET", f"{API}runs/get?run_id={run_id}")
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                return None
            return {str(t.get("key")): str(t.get("value", "")) for t in json.loads(data)["run"]["data"].get("tags") or []}
        except (OSError, ValueError, KeyError):
            return None
        finally:
            conn.close()

    def _create_only(self, endpoint: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Forward a tag write as GitLab applies it (create-only); None when answered here."""
        guard = self.owner
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return self._forward("POST", body)
        run_id = str(payload.get("run_id") or payload.get("run_uuid") or "")
        have = self._existing_tags(run_id) if run_id else None
        if have is None:
            return self._forward("POST", body)
        if endpoint == "runs/set-tag":
            if str(payload.get("key")) in have:
                guard.tag_conflicts.append((run_id, str(payload.get("key")), str(payload.get("value"))))
                self._answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "tag already exists"})
                return None
            return self._forward("POST", body)
        kept, seen = [], dict(have)
        for tag in payload.get("tags") or []:
            key = str(tag.get("key"))
            if key in seen:
                guard.skipped_tags.append((run_id, key, str(tag.get("value", "")), seen[key]))
                continue
            seen[key] = str(tag.get("value", ""))
            kept.append(tag)
        if len(kept) != len(payload.get("tags") or []):
            payload["tags"] = kept
            body = json.dumps(payload).encode()
        return self._forward("POST", body)

    def _fault(self, fault: Fault) -> None:
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
        self._answer(fault.status, {"error_code": fault.code, "message": "injected"}, extra)

    def _forward(self, method: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.owner.backend_port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP and k.lower() != "authorization"}
        headers["Host"] = f"127.0.0.1:{self.owner.backend_port}"
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(method, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

