"""Start Voila on the dashboard notebook: one command line, shared by the CLI, tests and benchmark."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from digitops import config
from digitops.dashboard import app, loader

DEFAULT_PORT = 8866
DEFAULT_HOST = "127.0.0.1"
#: A kernel idle this many seconds with no page connected (closed, or never opened) is shut down.
CULL_IDLE_TIMEOUT = 60
CULL_INTERVAL = 10
#: Most kernels one server runs at once; the next visitor gets a "busy, try again" page.
#: About 80 MB each (measured, README "The dashboard"): 60 and the model process fit a 6 GiB replica.
MAX_KERNELS = 60
#: Measured memory (MB, bench/bench_dashboard.py): a visitor's kernel, the model process, the Voila server.
#: deploy/k8s sizes a replica from these (tests/test_dashboard.py checks it).
SESSION_MB, MODEL_PROCESS_MB, SERVER_MB = 80, 800, 200


def voila_command(
    notebook: Path,
    *,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    preheat: bool = False,
    open_browser: bool = False,
    root_dir: Path | None = None,
    runs_dir: Path | None = None,
    cull_idle_timeout: int = CULL_IDLE_TIMEOUT,
    cull_interval: int = CULL_INTERVAL,
    max_kernels: int = MAX_KERNELS,
) -> list[str]:
    """The ``voila`` command line serving ``notebook``.

    Voila runs through :mod:`digitops.dashboard.voila_app` (one model process,
    at most ``max_kernels`` kernels, v1 websockets only). Tracebacks never
    reach visitors, idle kernels without a page are culled (Voila cannot shut
    down a closed page's kernel itself), and the HTML/PNG reports of runs in
    ``runs_dir`` (default: the configured runs folder), when it is under
    ``root_dir``, can be linked from the model card.
    """
    notebook = Path(notebook).resolve()
    root = Path(root_dir).resolve() if root_dir else notebook.parent
    if not notebook.is_relative_to(root):
        root = notebook.parent  # Voila serves the notebook by its path below the root
    args = [
        sys.executable,
        "-m",
        "digitops.dashboard.voila_app",
        str(notebook),
        f"--port={port}",
        f"--Voila.ip={host}",
        f"--Voila.root_dir={root}",
        "--show_tracebacks=False",
        f"--MappingKernelManager.cull_idle_timeout={cull_idle_timeout}",
        f"--MappingKernelManager.cull_interval={cull_interval}",
        "--MappingKernelManager.cull_connected=False",  # an open page keeps its kernel
        f"--DigitopsVoila.max_kernels={max_kernels}",
        # Serve run reports only, not every image under the root.
        f"--VoilaConfiguration.file_allowlist={_reports_pattern(root, runs_dir)}",
    ]
    if not open_browser:
        args.append("--no-browser")
    if preheat:
        args += ["--preheat_kernel=True", "--pool_size=1"]
    return args


def _reports_pattern(root: Path, runs_dir: Path | None) -> str:
    runs = _relative(runs_dir if runs_dir is not None else config.runs_dir(), root)
    if runs is None:
        return r"(?!)"  # matches nothing
    return re.escape(runs) + r"/[^/]+/[^/]+\.(html|png)"


def _relative(path: Path, root: Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None


def server_env(root_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Voila and its kernels.

    Kernels run in the notebook's folder, so relative state paths are made
    absolute here, and the app is told where run reports are served.
    """
    env = dict(os.environ if base is None else base)
    # Same defaults as digitops.config (the project root's store), read from ``env`` rather than this process.
    home, runs_path = (
        Path(config.env(name, env) or config.default_location(default)).resolve()
        for name, default in (("DIGITOPS_HOME", ".digitops"), ("DIGITOPS_RUNS", "runs"))
    )
    env.update(DIGITOPS_HOME=str(home), DIGITOPS_RUNS=str(runs_path))
    for name in (loader.CACHE_ENV, "DIGITOPS_FEEDBACK_DIR"):  # the model cache; field drawings kept by kernels
        value = config.env(name, env)
        if value:
            env[name] = str(Path(value).resolve())
    runs = _relative(runs_path, Path(root_dir))
    if runs is not None:
        env[app.FILES_ENV] = runs
    else:
        env.pop(app.FILES_ENV, None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def prefetch() -> str:
    """Download and verify the model to serve before the server starts; a line saying what happened.

    Every kernel would fetch it on first use anyway; doing it once up front
    surfaces registry problems in the terminal and keeps the first page fast.
    """
    try:
        version = loader.resolve()
        path = loader.fetch(version)
    except loader.NoModelError as exc:
        return "warning: " + str(exc).splitlines()[0] + " The page will explain how to register one."
    except loader.ChecksumError:
        raise
    except Exception as exc:  # registry unreachable: the page reports it, the server still starts
        return f"warning: could not fetch the model now ({type(exc).__name__}: {exc}); pages will retry"
    return f"serving {version.name} {version.version} ({version.status}) from {path}"
