"""The runner's fixed costs, cut without changing what a run produces (bench/bench_notebook.py measures them).

- jsonschema, which nbformat and papermill import, imports ``rfc3987_syntax`` eagerly when it is
  installed (JupyterLab's and Voila's jupyter_events pull it in), and that module builds about 35
  Earley parsers at import: 0.9-2.2 s on 2 shared cores before the first notebook is read
  (python-jsonschema/jsonschema#1428). No notebook schema uses the ``iri`` formats it checks, so
  it now loads when the first IRI is checked; validation itself is unchanged.
- A kernel that imported TensorFlow spends 1.0-1.4 s at exit in the interpreter's final garbage
  collection, and papermill waits for it. A plain script pays the same at its own exit; the kernel,
  whose cells have already written and closed their files, freezes its objects at exit so that
  sweep skips them (0.1-0.4 s).
- nbconvert's import and first HTML export (about 1 s) run in a thread while the kernel starts and
  imports TensorFlow on one core, instead of after the last cell.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_IRI_MODULE = "rfc3987_syntax"

#: For the kernels the runner starts: freeze every object at exit (last atexit handler to run), so
#: the interpreter's final collection does not walk TensorFlow's object graph. Trailing ";": no output.
KERNEL_FAST_EXIT_LINE = "__import__('atexit').register(__import__('gc').freeze);"
KERNEL_FAST_EXIT_ARGUMENTS = (f"--IPKernelApp.exec_lines={KERNEL_FAST_EXIT_LINE}",)


def _real_iri_module(stand_in: types.ModuleType) -> Any:
    if sys.modules.get(_IRI_MODULE) is stand_in:
        del sys.modules[_IRI_MODULE]
    return importlib.import_module(_IRI_MODULE)


def defer_iri_grammar() -> bool:
    """Put a stand-in for ``rfc3987_syntax`` in ``sys.modules`` that imports the real one on first use.

    Call before anything imports jsonschema (nbformat, papermill). Returns True when the
    stand-in is in place; False when the module is absent, already imported, or jsonschema
    already took it (then there is nothing left to save).
    """
    if _IRI_MODULE in sys.modules or "jsonschema" in sys.modules:
        return False
    try:
        if importlib.util.find_spec(_IRI_MODULE) is None:
            return False
    except (ImportError, ValueError):
        return False
    stand_in = types.ModuleType(_IRI_MODULE, "imports the real rfc3987_syntax on first use (digitops.startup)")

    def is_valid_syntax(*args: Any, **kwargs: Any) -> Any:
        return _real_iri_module(stand_in).is_valid_syntax(*args, **kwargs)

    def __getattr__(name: str) -> Any:  # anything else a caller asks of the module
        if name.startswith("__"):  # the import system probing (__path__, __file__): not a use
            raise AttributeError(name)
        return getattr(_real_iri_module(stand_in), name)

    stand_in.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    stand_in.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[_IRI_MODULE] = stand_in
    return True


def _warm_html_export() -> None:
    try:
        import nbformat
        from nbconvert import HTMLExporter

        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# warm-up"),
                                             nbformat.v4.new_code_cell("print(1)")])
        HTMLExporter(template_name="lab").from_notebook_node(nb)
    except Exception:  # noqa: BLE001 - only a head start; the real export reports its own errors
        pass


def warm_html_export() -> threading.Thread:
    """Import nbconvert and render a one-cell notebook in a daemon thread; returns the thread."""
    thread = threading.Thread(target=_warm_html_export, name="digitops-warm-html", daemon=True)
    thread.start()
    return thread
