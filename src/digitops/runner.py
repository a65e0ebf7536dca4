"""Execute a stage's notebook with papermill into its run folder and render it as HTML.

The runner owns the run's lifecycle in the tracker: it opens the run before
the kernel starts (so a kernel that dies early still leaves a record) and
closes it as finished or failed afterwards. A failing notebook still yields
its executed ``.ipynb`` and ``.html``, with papermill's banner at the failing
cell. Ctrl-C, SIGTERM and SIGHUP end the run as ``failed`` too (with the HTML
of what ran); only SIGKILL escapes, and the next command that reads runs marks
such a run ``abandoned``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from digitops import atomic, config, fingerprint, params as params_mod, quiet, reuse as reuse_mod, runs, startup
from digitops.errors import EXIT_FAILED, EXIT_SIGNAL_BASE, NotebookFailed

STAGES = ("train", "evaluate")
#: Parameters only the runner sets; users choose them through CLI arguments.
RESERVED = ("run_id", "output_dir")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived. A KeyboardInterrupt, so asyncio (inside papermill) re-raises it too."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _kill_children() -> None:
    """SIGKILL this process's children (the notebook kernel).

    Shut down gracefully while a cell runs, the kernel prints a 20-line zmq
    traceback (its reply socket closes under it) and may outlive us; killed,
    it just stops. Its cells' writes are atomic, so nothing half-written stays.
    """
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me:  # field 4 of /proc/PID/stat: the parent pid
            with contextlib.suppress(OSError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


#: signals received while a notebook ran (see signals_raise)
_received: list[int] = []


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within: Ctrl-C raises KeyboardInterrupt, SIGTERM/SIGHUP :class:`Interrupted`, after the kernel is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        # Remembered as well as raised: a library may swallow the exception (then the dead
        # kernel ends the execution), and the run must still say which signal stopped it.
        _received.append(signum)
        _kill_children()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within: SIGINT/SIGTERM/SIGHUP wait, so a second Ctrl-C cannot stop a run's final record."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


class StageFailed(NotebookFailed, RuntimeError):
    """A notebook raised (or a signal stopped it); its executed copy and HTML are still written."""

    def __init__(self, result: "StageResult") -> None:
        self.result = result
        super().__init__(result.error or "notebook failed")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """1 for a failed notebook, 128 + N when signal N stopped it."""
        if self.result.interrupted:
            return EXIT_SIGNAL_BASE + int(signal.Signals[self.result.interrupted])
        return EXIT_FAILED


@dataclass
class StageResult:
    """What one execution produced."""

    stage: str
    run_id: str
    folder: Path
    notebook: Path
    html: Path | None
    ok: bool
    seconds: float
    parameters: dict[str, Any] = field(default_factory=dict)
    #: "cell In [N] `first line`: ExcName: message" when the notebook failed
    error: str | None = None
    failed_cell: int | None = None
    #: "SIGINT", "SIGTERM" or "SIGHUP" when a signal stopped the notebook
    interrupted: str | None = None
    #: the run whose results were reused instead of executing the notebook
    reused_from: str | None = None
    #: why the stage was reused, or why not ("inputs changed since run X: params"); None when not asked
    reuse_reason: str | None = None


def notebooks_dir() -> Path:
    """``$DIGITOPS_NOTEBOOKS``, else ``./notebooks``, else the checkout this package lives in."""
    if config.env("DIGITOPS_NOTEBOOKS"):
        return Path(config.env("DIGITOPS_NOTEBOOKS") or "")
    here = Path("notebooks")
    if (here / "train.ipynb").is_file():
        return here
    return Path(__file__).resolve().parents[2] / "notebooks"


def notebook_for(stage: str) -> Path:
    """The source notebook of ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    path = notebooks_dir() / f"{stage}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"notebook for stage {stage!r} not found at {path} (set DIGITOPS_NOTEBOOKS)")
    return path


def check_parameters(stage: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Validate user parameters against the stage's notebook; raise ParameterError before any kernel."""
    return params_mod.validate(notebook_for(stage), parameters, reserved=RESERVED)


@contextlib.contextmanager
def _kernel_environment(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    # The kernel inherits this process' environment: give it text progress bars
    # (HTML can't show widgets) and this interpreter first on PATH, so the
    # "python3" kernelspec starts the Python that has digitops installed.
    # ``extra`` (e.g. DIGITOPS_MODEL_NAME from `pipeline --model-name`) is for the kernel only.
    extra = dict(extra or {})
    saved = {k: os.environ.get(k) for k in ("DIGITOPS_PROGRESS", "PATH", "PYDEVD_DISABLE_FILE_VALIDATION", *extra)}
    os.environ.update(extra)
    os.environ["DIGITOPS_PROGRESS"] = "text"
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def to_html(notebook: Path) -> Path:
    """Render an executed notebook as a standalone HTML page next to it."""
    startup.defer_iri_grammar()
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    html = notebook.with_suffix(".html")
    # Beside it, then renamed: a full disk or a kill never leaves half a page under the real name.
    atomic.write_text(html, body)
    return html


def execute(
    stage: str,
    parameters: dict[str, Any] | None = None,
    *,
    run_id: str | None = None,
    progress: bool = True,
    log_output: bool = False,
    timeout: int | None = None,
    kernel_env: Mapping[str, str] | None = None,
    reuse: bool = False,
) -> StageResult:
    """Validate, execute ``notebooks/<stage>.ipynb`` into ``runs/<run_id>/`` and render HTML.

    Raises :class:`~digitops.params.ParameterError` before starting a kernel
    when parameters are wrong, and :class:`StageFailed` (carrying the result)
    when the notebook raised. ``kernel_env`` adds environment variables for the kernel only.
    With ``reuse``, a finished run with the same :mod:`~digitops.fingerprint` stands in
    for the execution (:mod:`digitops.reuse`; no kernel starts). Every run records its
    fingerprint, so one made without ``reuse`` can be reused later.
    """
    # Long: start run, execute, render HTML and close the run share one try/finally so a run always ends.
    startup.defer_iri_grammar()  # before papermill imports jsonschema
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_for(stage)
    checked = check_parameters(stage, dict(parameters or {}))
    run_id = run_id or runs.new_run_id()
    folder = runs.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"{stage}.ipynb"
    injected = {**checked, "run_id": run_id, "output_dir": str(folder)}

    tracker = _tracker()
    tags = {"stage": stage, **runs.ci_tags()}
    fp = _fingerprint(stage, source, checked, folder)
    reason = None
    if reuse and fp is not None:
        started = time.perf_counter()
        decision = reuse_mod.decide(tracker, fp, exclude=run_id)
        reason = decision.reason
        if decision.source is not None:
            extra = {} if stage == "train" else {f"{stage}.model_path": str(_model_file(checked, folder))}
            with signals_deferred():
                reuse_mod.apply(decision, tracker, run_id, tags=tags, params=extra)
            html = folder / f"{stage}.html"
            return StageResult(
                stage, run_id, folder, output, html if html.is_file() else None, True,
                time.perf_counter() - started, injected, reused_from=decision.origin, reuse_reason=reason,
            )
        tags[reuse_mod.REASON[stage]] = reason
    elif reuse:
        reason = "inputs could not be fingerprinted"
    if fp is not None:
        tags.update(fp.tags())
    tracker.start_run(
        run_id,
        name=run_id,
        tags=tags,
        git_commit=runs.git_commit(),
        project=config.project_name(),
    )
    before = _listing(folder)
    started = time.perf_counter()
    _received.clear()
    error = failed_cell = interrupted = None
    html = None
    status = "failed"
    try:
        try:
            with _kernel_environment(kernel_env), signals_raise():
                papermill.execute_notebook(
                    str(source),
                    str(output),
                    parameters=injected,
                    kernel_name="python3",
                    progress_bar=progress,
                    log_output=log_output,
                    execution_timeout=timeout,
                    cwd=os.getcwd(),
                    extra_arguments=[*quiet.kernel_arguments(), *startup.KERNEL_FAST_EXIT_ARGUMENTS],
                    # Once the kernel is up: its first cell imports TensorFlow on one core, nbconvert the other.
                    on_notebook_start=lambda **_: startup.warm_html_export(),
                )
        except PapermillExecutionError as exc:
            # The execution count is what the HTML shows next to the failing cell.
            failed_cell = exc.exec_count
            first_line = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "").strip()
            error = f"cell In [{exc.exec_count}] `{first_line[:80]}`: {exc.ename}: {exc.evalue}"
        except KeyboardInterrupt as exc:
            interrupted = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
            error = f"interrupted by {interrupted}"
        except Exception as exc:  # noqa: BLE001 - kernel death, timeouts: still record and render
            error = f"{type(exc).__name__}: {exc}"
        with signals_deferred():
            if interrupted is None and _received:
                interrupted = signal.Signals(_received[-1]).name
                error = f"interrupted by {interrupted}"
            if interrupted is None and error and ": KeyboardInterrupt:" in error:
                interrupted = "SIGINT"  # Ctrl-C reached the kernel first: its cell raised
            try:
                html = to_html(output) if output.is_file() else None
                for path in (output, html):
                    if path is not None:
                        tracker.log_artifact(run_id, path)
            except Exception as exc:  # noqa: BLE001 - a full disk truncates what papermill wrote
                error = error or f"could not keep the executed notebook: {type(exc).__name__}: {exc}"
            status = "failed" if error else "finished"
            if status == "finished":
                _record_outputs(tracker, run_id, folder, stage, before)
    finally:
        # Whatever happened above (a full disk, a second signal, an HTML that failed to render),
        # the run ends with a final status.
        with signals_deferred():
            try:
                runs.update_metrics(folder, stages={stage: status})
            except (OSError, ValueError):
                pass  # the tracker's record below is the one that counts
            tracker.end_run(run_id, status)
    seconds = time.perf_counter() - started
    result = StageResult(
        stage, run_id, folder, output, html, error is None, seconds, injected, error, failed_cell, interrupted,
        reuse_reason=reason,
    )
    if error:
        raise StageFailed(result)
    return result


def _model_file(checked: Mapping[str, Any], folder: Path) -> Path:
    """The model an evaluation scores: ``model_path`` when given, else the run's own."""
    return Path(checked["model_path"]) if checked.get("model_path") else folder / reuse_mod.MODEL


def _fingerprint(stage: str, source: Path, checked: Mapping[str, Any], folder: Path) -> Any:
    """The stage's :class:`~digitops.fingerprint.Fingerprint`, or None when an input cannot be read.

    None never stops a run (the notebook reports a missing model itself); it only means
    this execution is neither reused nor reusable.
    """
    from digitops.registry.base import sha256_file

    try:
        if stage == "train":
            return fingerprint.for_train(source, checked)
        model = _model_file(checked, folder)
        return fingerprint.for_evaluate(source, checked, sha256_file(model)) if model.is_file() else None
    except (OSError, ValueError):
        return None


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of the run folder's visible files."""
    out = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.is_file() and not path.name.startswith("."):
            st = path.stat()
            out[path.name] = (st.st_size, st.st_mtime_ns)
    return out


def _record_outputs(tracker: Any, run_id: str, folder: Path, stage: str, before: Mapping[str, Any]) -> None:
    """Remember which files the stage wrote and the trained model's SHA256 (what reuse checks).

    Best effort: when this fails the run stays finished, and is simply never reused.
    """
    from digitops.registry.base import sha256_file

    try:
        after = _listing(folder)
        written = [n for n, stat in after.items() if before.get(n) != stat and n != runs.METRICS_FILE]
        runs.record_outputs(folder, stage, files=written)
        if stage == "train" and (folder / reuse_mod.MODEL).is_file():
            tracker.set_tags(run_id, {reuse_mod.MODEL_SHA: sha256_file(folder / reuse_mod.MODEL)})
    except Exception:  # noqa: BLE001 - only reuse depends on it, and it fails closed without it
        pass


def _tracker() -> Any:
    from digitops.tracking import get_tracker

    return get_tracker()
