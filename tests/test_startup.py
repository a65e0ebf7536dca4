"""digitops.startup: the runner's slow imports deferred or overlapped, and its kernels' fast exit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from digitops import startup


def _fresh_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first_use", [
    "from digitops import runner; runner.to_html(path)",  # the runner's HTML page
    "from digitops import params; params.declared(path)",  # the parameters check before a run
])
def test_reading_notebooks_does_not_build_the_iri_grammar_and_iri_checks_still_work(
    tmp_path: Path, first_use: str
) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("epochs: int = 1")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "done.ipynb"
    nbformat.write(nb, path)
    # A fresh interpreter: this one has long imported jsonschema.
    got = _fresh_python(
        "import json, sys\n"
        "from pathlib import Path\n"
        f"path = Path({str(path)!r})\n"
        f"{first_use}\n"
        "import papermill, nbconvert\n"
        "built_at_import = 'lark' in sys.modules\n"
        "import jsonschema\n"
        "fc = jsonschema.FormatChecker()\n"
        "print(json.dumps({'built_at_import': built_at_import,\n"
        "    'good': fc.conforms('https://example.org/caf\u00e9', 'iri'), 'bad': fc.conforms('no scheme', 'iri'),\n"
        "    'has_iri': 'iri' in fc.checkers}))\n"
    )
    assert not got["built_at_import"], "rfc3987_syntax's parsers were built at import"
    if importlib.util.find_spec("rfc3987_syntax") is not None:
        # Nothing lost: the real module loads on the first IRI check and judges it.
        assert got["has_iri"] and got["good"] is True and got["bad"] is False


def test_deferring_is_a_no_op_once_jsonschema_is_loaded() -> None:
    import jsonschema  # noqa: F401 - the situation under test

    before = sys.modules.get("rfc3987_syntax")
    assert startup.defer_iri_grammar() is False
    assert sys.modules.get("rfc3987_syntax") is before


def test_stand_in_does_not_answer_the_import_systems_probes() -> None:
    got = _fresh_python(
        "import json, sys\n"
        "from digitops import startup\n"
        "placed = startup.defer_iri_grammar()\n"
        "probe = hasattr(sys.modules.get('rfc3987_syntax'), '__path__')\n"
        "print(json.dumps({'placed': placed, 'probe': probe, 'lark': 'lark' in sys.modules}))\n"
    )
    if importlib.util.find_spec("rfc3987_syntax") is None:
        assert got["placed"] is False
    else:
        assert got == {"placed": True, "probe": False, "lark": False}


def test_html_warm_up_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nbconvert", None)  # an import that fails
    errors: list[object] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    thread = startup.warm_html_export()
    thread.join(60)
    assert not thread.is_alive() and thread.daemon and errors == []


def test_kernel_exit_line_freezes_every_object_when_the_interpreter_exits() -> None:
    got = _fresh_python(
        "import atexit, gc, json\n"
        f"exec({startup.KERNEL_FAST_EXIT_LINE!r})\n"
        "before = gc.get_freeze_count()\n"
        "atexit._run_exitfuncs()  # what the interpreter runs first as it exits\n"
        "print(json.dumps({'before': before, 'after': gc.get_freeze_count()}))\n"
    )
    assert got["before"] == 0 and got["after"] > 0
