"""One model process per dashboard server: TensorFlow and the model are loaded once, not in every kernel.

A visitor's kernel holds only the widgets, NumPy and Pillow (about 60-80 MB
instead of about 0.5 GB with TensorFlow). It sends the preprocessed 28x28
image over a unix socket to this process, which loads the registered version
from the model cache (checksum-verified by :func:`loader.load_file`) and
answers the ten probabilities. The socket's path reaches kernels through
``$DIGITOPS_MODEL_SOCKET``, set by the Voila launcher (:mod:`voila_app`) that
starts this process and stops it with itself.

Wire format (one request per connection): a 4-byte big-endian length, then
that many bytes of JSON; the answer has the same framing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SOCKET_ENV = "DIGITOPS_MODEL_SOCKET"
#: A request larger than this is refused unread (a 28x28 image as JSON is about 3 kB).
MAX_REQUEST = 64 * 1024
#: Seconds a kernel waits for an answer: the first request may wait for TensorFlow to load.
CLIENT_TIMEOUT_S = 60.0

log = logging.getLogger("digitops.dashboard.model")


class ModelServerError(RuntimeError):
    """The model process refused a request or could not be reached."""


# ----------------------------------------------------------------------------- framing


def _send(sock: socket.socket, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode("utf-8")
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            raise ModelServerError("the model process closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, limit: int) -> dict[str, Any]:
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    if size > limit:
        raise ModelServerError(f"message of {size} bytes is over the {limit}-byte limit")
    return json.loads(_recv_exact(sock, size).decode("utf-8"))


# ----------------------------------------------------------------------------- client (in kernels)


class RemoteModel:
    """A kernel's handle on the model process: the version it serves and :meth:`predict`."""

    def __init__(self, socket_path: str, version: Any, timeout: float = CLIENT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.version = version
        self.timeout = timeout

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the answer; :class:`ModelServerError` on refusal or no answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
                _send(sock, payload)
                answer = _recv(sock, 1 << 20)
            except (OSError, ValueError) as exc:
                raise ModelServerError(f"model process at {self.socket_path}: {type(exc).__name__}: {exc}") from None
        if "error" in answer:
            raise ModelServerError(str(answer["error"]))
        return answer

    def predict(self, image: Any) -> Any:
        """Probabilities (10,) for one preprocessed 28x28 uint8 image."""
        import numpy as np

        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.shape != (28, 28):
            raise ValueError(f"expected a 28x28 image, got shape {pixels.shape}")
        v = self.version
        answer = self.request(
            {"op": "predict", "name": v.name, "version": v.version, "sha256": v.sha256, "image": pixels.tolist()}
        )
        return np.asarray(answer["proba"], dtype=np.float32)


def client_from_env(version: Any) -> RemoteModel | None:
    """A :class:`RemoteModel` when this process runs under the dashboard launcher, else None."""
    from digitops import config

    path = config.env(SOCKET_ENV)
    return RemoteModel(path, version) if path else None


# ----------------------------------------------------------------------------- server (one process)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        try:
            request = _recv(sock, MAX_REQUEST)
            answer = self.server.answer(request)  # type: ignore[attr-defined]
        except Exception as exc:  # one bad request must not stop the process
            log.warning("refused a request: %s: %s", type(exc).__name__, exc)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            _send(sock, answer)
        except OSError:
            pass  # the kernel went away


class ModelServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves predictions of the registered, checksum-verified model versions in the model cache."""

    daemon_threads = True
    # Every visitor may press Predict at once: with the default backlog of 5, a kernel's connect
    # to a busy server fails at once (EAGAIN on a unix socket with a timeout) instead of queueing.
    request_queue_size = 256

    def __init__(self, path: str) -> None:
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)
        # Keras models are not documented as thread-safe; one image costs ~1-2 ms, so serialise.
        self._predict_lock = threading.Lock()
        #: Set once the version to serve is loaded (or could not be): the server then starts listening.
        self.preloaded = threading.Event()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "preloaded": self.preloaded.is_set()}
        if op != "predict":
            raise ValueError(f"unknown op {op!r}")
        import numpy as np

        from digitops.dashboard import loader

        loaded = self._load(str(request["name"]), str(request["version"]), str(request["sha256"]))
        image = np.asarray(request["image"], dtype=np.float32)
        if image.shape != (28, 28) or not np.isfinite(image).all():
            raise ValueError(f"expected a finite 28x28 image, got shape {image.shape}")
        with self._predict_lock:
            proba = loader.predict(loaded, np.clip(image, 0, 255).astype(np.uint8))
        return {"proba": [float(p) for p in proba]}

    @staticmethod
    def _load(name: str, version: str, sha256: str) -> Any:
        """The loaded model of a cached version whose registry record carries ``sha256``."""
        from digitops.dashboard import loader

        # Only what the cache holds, with its registry record, is served: never a path a client names.
        record = loader.cached_record(name, version)
        if record is None or record.sha256 != sha256:
            raise loader.ChecksumError(f"{name} {version} with SHA256 {sha256[:12]}... is not in the model cache")
        return loader.load_file(record, loader.cache_path(name, version))  # verifies the file again


def _preload(done: threading.Event) -> None:
    """Load the version to serve now, so the first visitor does not wait for TensorFlow."""
    from digitops.dashboard import loader

    try:
        version = loader.resolve()
        loader.load_file(version, loader.fetch(version))
        log.info("model process ready: %s %s", version.name, version.version)
    except Exception as exc:  # no model yet, registry down: pages explain; predictions retry the load
        log.warning("model not preloaded: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    finally:
        done.set()


def _exit_with_parent(parent: int) -> None:
    # Backstop for PR_SET_PDEATHSIG: a model process never outlives the server that started it.
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)


def serve(path: str, parent: int | None = None) -> None:
    """Run the model process on the unix socket ``path`` until SIGTERM or the parent exits."""
    logging.basicConfig(level=logging.INFO, format="[digitops.model] %(levelname)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.path.exists(path):
        os.unlink(path)
    server = ModelServer(path)
    if parent:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    threading.Thread(target=_preload, args=(server.preloaded,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        try:
            os.unlink(path)
        except OSError:
            pass


# ----------------------------------------------------------------------------- lifecycle (in the server)


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when the process that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass  # not Linux: the child's parent watch still applies


def spawn(path: str) -> subprocess.Popen[bytes]:
    """Start the model process on ``path``; its output goes to this process's stderr (the server log)."""
    args = [sys.executable, "-m", "digitops.dashboard.modelserver", path, str(os.getpid())]
    return subprocess.Popen(args, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)


def wait_ready(path: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120.0) -> bool:
    """True once the model process on ``path`` has loaded (or failed to load) the version to serve.

    False if it exited or ``timeout`` passed; pages then show the friendly error until it is up.
    """
    client = RemoteModel(path, None, timeout=5.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if client.request({"op": "ping"}).get("preloaded"):
                return True
        except ModelServerError:
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Stop the model process (SIGTERM, then SIGKILL) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
