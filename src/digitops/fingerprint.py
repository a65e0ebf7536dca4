"""Run fingerprints: one SHA256 over everything a stage's result depends on.

Two runs of a stage with the same fingerprint produce the same model and the same
metrics (training is seeded), so the second can reuse the first's files
(:mod:`digitops.reuse`). The parts, each recorded as its own run tag so
``digitops runs show`` can say which one changed:

- ``notebook``: the notebook's code cells only. Outputs, execution counts,
  metadata and Markdown are left out, so re-saving a notebook in JupyterLab
  (or running it by hand) does not change it.
- ``params``: the resolved parameters, i.e. the notebook's defaults overlaid
  with the profile, files and ``-p`` values, as canonical JSON: ``-p epochs 2``
  and the default ``epochs = 2`` are the same input.
- ``package``: every ``.py`` file of the installed ``digitops`` package. All of
  it rather than the modules training imports today: a narrower set would have
  to track imports, and a missed one would reuse a stale model. Editing the
  dashboard retrains; that costs minutes, never a wrong model.
- ``data``: the pinned MNIST checksum (:data:`digitops.data.DATASET_CHECKSUM`;
  every load verifies the files against those pins), plus the newest field
  export's SHA256 when the stage reads field drawings (training with
  ``field_train_share`` above 0; evaluation always scores the newest export).
- ``versions``: Keras, TensorFlow and NumPy versions (installed distributions,
  read without importing TensorFlow).
- evaluation adds ``model``: the SHA256 of the model file it scores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

#: tag holding a stage's fingerprint (its parts under ``<tag>.<part>``)
TAGS = {"train": "digitops.fingerprint", "evaluate": "digitops.eval_fingerprint"}
#: distributions whose versions change what a model computes; the first installed name counts
VERSIONED = {"keras": ("keras",), "tensorflow": ("tensorflow", "tensorflow-cpu"), "numpy": ("numpy",)}
#: parameters that name paths rather than inputs; evaluation's model enters as its SHA256 instead
NOT_INPUTS = {"train": ("run_id", "output_dir"), "evaluate": ("run_id", "output_dir", "model_path")}


@dataclass(frozen=True)
class Fingerprint:
    """A stage's inputs, part by part, and their digest."""

    stage: str
    parts: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """SHA256 (hex) of the stage and its parts as canonical JSON."""
        return _sha256_text(_canonical({"stage": self.stage, "parts": self.parts}))

    @property
    def tag(self) -> str:
        """The run tag carrying this stage's digest."""
        return TAGS[self.stage]

    def tags(self) -> dict[str, str]:
        """The digest and every part, as run tags."""
        return {self.tag: self.digest, **{f"{self.tag}.{k}": v for k, v in self.parts.items()}}

    def differences(self, tags: Mapping[str, str]) -> list[str]:
        """Names of the parts that differ from those recorded in ``tags`` (another run's)."""
        return [k for k, v in self.parts.items() if tags.get(f"{self.tag}.{k}") != v]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def notebook_source(path: str | os.PathLike) -> str:
    """SHA256 of a notebook's code cells' sources (outputs, metadata and Markdown ignored)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return _sha256_text(_canonical(code))


def resolved_params(stage: str, notebook: str | os.PathLike, checked: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's declared defaults overlaid with ``checked`` (validated values), less path parameters."""
    from digitops import params as params_mod

    # Validation already widened ints given for float parameters, so 2 and 2.0 hash alike.
    out = {name: decl.default for name, decl in params_mod.declared(notebook).items()}
    out.update(checked)
    for name in NOT_INPUTS[stage]:
        out.pop(name, None)
    return out


@functools.lru_cache(maxsize=None)
def _package_source(root: str) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(root).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def package_source() -> str:
    """SHA256 over the ``digitops`` package's ``.py`` files (names and contents)."""
    return _package_source(str(Path(__file__).resolve().parent))


def library_versions() -> str:
    """``keras=3.x;numpy=2.x;tensorflow=2.x`` from the installed distributions."""
    found = []
    for label, names in sorted(VERSIONED.items()):
        version = "absent"
        for name in names:
            try:
                version = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
        found.append(f"{label}={version}")
    return ";".join(found)


def _field_export() -> str:
    """SHA256 of the newest field export (from its manifest, verified when loaded), or ``none``."""
    from digitops.feedback import dataset

    npz = dataset.latest()
    if npz is None:
        return "none"
    try:
        return str(json.loads(npz.with_suffix(".json").read_text()).get("sha256") or "unreadable")
    except (OSError, ValueError):
        return "unreadable"  # the notebook fails on it; the run then is never reused


def data_part(reads_field: bool) -> str:
    """The pinned MNIST checksum, plus the newest field export's when the stage reads field drawings."""
    from digitops.data import DATASET_CHECKSUM

    return f"mnist={DATASET_CHECKSUM}" + (f";field={_field_export()}" if reads_field else "")


def for_train(notebook: str | os.PathLike, checked: Mapping[str, Any]) -> Fingerprint:
    """The training fingerprint for validated parameters ``checked``."""
    params = resolved_params("train", notebook, checked)
    return Fingerprint("train", {
        "notebook": notebook_source(notebook),
        "params": _sha256_text(_canonical(params)),
        "package": package_source(),
        "data": data_part(float(params.get("field_train_share") or 0) > 0),
        "versions": library_versions(),
    })


def for_evaluate(notebook: str | os.PathLike, checked: Mapping[str, Any], model_sha256: str) -> Fingerprint:
    """The evaluation fingerprint for validated parameters ``checked`` and the model file's SHA256."""
    params = resolved_params("evaluate", notebook, checked)
    return Fingerprint("evaluate", {
        "notebook": notebook_source(notebook),
        "params": _sha256_text(_canonical(params)),
        "model": model_sha256,
        "package": package_source(),
        "data": data_part(True),
        "versions": library_versions(),
    })
