"""Notebook parameter inspection and validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from digitops import params

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "notebooks" / "train.ipynb"


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(
        'name: str = "a"  # a name\ncount: int = 2\nrate: float = 0.5\nflag: bool = False\n'
        "maybe: Optional[int] = None\nuntyped = 3\n"
    )
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_declared_types(notebook: Path) -> None:
    decl = params.declared(notebook)
    assert {n: d.type_name for n, d in decl.items()} == {
        "name": "str", "count": "int", "rate": "float", "flag": "bool", "maybe": "int", "untyped": "int",
    }
    assert decl["maybe"].optional and decl["name"].help == "a name"


@pytest.mark.parametrize(
    "given, expected",
    [({"count": 3}, {"count": 3}), ({"rate": 1}, {"rate": 1.0}), ({"maybe": None}, {"maybe": None}),
     ({"flag": True, "name": "b"}, {"flag": True, "name": "b"})],
)
def test_valid_values(notebook: Path, given: dict, expected: dict) -> None:
    out = params.validate(notebook, given)
    assert out == expected and type(out.get("rate", 0.0)) is float


@pytest.mark.parametrize(
    "given, fragment",
    [
        ({"count": "nope"}, "parameter 'count' expects int (default 2), got str 'nope'"),
        ({"count": 2.5}, "expects int"),
        ({"count": True}, "expects int"),
        ({"flag": "yes"}, "expects bool"),
        ({"name": None}, "expects str"),
        ({"cuont": 1}, "unknown parameter 'cuont'; allowed: name, count, rate, flag, maybe, untyped"),
    ],
)
def test_invalid_values_name_parameter_and_type(notebook: Path, given: dict, fragment: str) -> None:
    with pytest.raises(params.ParameterError) as err:
        params.validate(notebook, given)
    assert fragment in str(err.value)


def test_all_problems_reported_at_once(notebook: Path) -> None:
    with pytest.raises(params.ParameterError) as err:
        params.validate(notebook, {"count": "x", "bogus": 1})
    assert "'count'" in str(err.value) and "'bogus'" in str(err.value)


def test_reserved_names_are_rejected() -> None:
    with pytest.raises(params.ParameterError, match="set by digitops itself"):
        params.validate(TRAIN, {"run_id": "x"}, reserved=("run_id",))


def test_cli_values_parse_like_yaml() -> None:
    assert params.parse_cli_value("3") == 3
    assert params.parse_cli_value("0.5") == 0.5
    assert params.parse_cli_value("true") is True
    assert params.parse_cli_value("cnn") == "cnn"


def test_parameter_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(params.ParameterError, match="mapping"):
        params.load_file(bad)
    with pytest.raises(params.ParameterError, match="does not exist"):
        params.load_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "epochs", "nope"], "parameter 'epochs' expects int"),
        (["-p", "no_such_param", "1"], "unknown parameter 'no_such_param'; allowed: architecture, epochs"),
    ],
)
def test_cli_rejects_bad_parameters_fast_without_a_kernel(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "digitops", "run", "train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DIGITOPS_HOME": str(tmp_path / "home"),
             "DIGITOPS_RUNS": str(tmp_path / "runs"), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "runs").exists(), "no run folder (and no kernel) before parameters are valid"


@pytest.mark.parametrize("name", ["quick", "ci", "full"])
def test_every_shipped_profile_fits_the_training_notebook(name: str) -> None:
    from digitops import model, profiles

    assert name in profiles.names()
    checked = params.validate(TRAIN, profiles.load(name))
    assert checked["architecture"] in model.ARCHITECTURES
    assert checked.get("ensemble", 1) >= 1 and checked["epochs"] >= 1
