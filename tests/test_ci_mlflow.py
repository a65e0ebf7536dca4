"""The GitLab CI pipeline on the MLflow backend, run with gitlab-ci-local (see tests/test_ci_pipeline.py).

The backend is chosen the way a project does it, with CI/CD variables only
(``DIGITOPS_BACKEND`` and the server's URI and token; with ``gitlab`` GitLab's
own variables give those). The server is the real ``mlflow server`` behind the
GitLab-subset guard, which must refuse nothing.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_fixtures import DUMMY_TOKEN  # noqa: E402
from test_ci_pipeline import dotenv, fake, gcl, mr_args, repo, tail  # noqa: E402,F401  (fixtures too)

pytestmark = pytest.mark.slow


def test_main_pipeline_registers_deploy_promotes_and_the_next_mr_sees_it(gcl, repo: Path, fake, mlflow_guard) -> None:
    from digitops.mlflow.registry import MlflowRegistry

    name = os.environ["DIGITOPS_MODEL_NAME"]
    backend = [
        "--variable", "DIGITOPS_BACKEND=mlflow",
        "--variable", f"MLFLOW_TRACKING_URI={mlflow_guard.url}",
        "--variable", f"MLFLOW_TRACKING_TOKEN={DUMMY_TOKEN}",
        "--variable", f"DIGITOPS_PROJECT={os.environ['DIGITOPS_PROJECT']}",
        "--variable", f"DIGITOPS_MODEL_NAME={name}",
        "--variable", "DIGITOPS_RUN_TESTS=false",
    ]
    # 1. The default branch: train -> evaluate -> register, the version in the MLflow registry.
    rc, log, status = gcl(*backend)
    assert rc == 0, tail(log)
    assert status == {"ci-image": "PASS", "train": "PASS", "evaluate": "PASS", "register": "PASS"}, tail(log)
    run_id = dotenv(repo, "evaluate")["RUN_ID"]
    assert dotenv(repo, "register")["MODEL_VERSION"] == "0.1.0"
    registry = MlflowRegistry()
    assert [(v.version, v.run_id, v.status) for v in registry.list_versions(name)] == [("0.1.0", run_id, "staging")]

    # 2. deploy-dashboard, run by hand, promotes it there.
    rc, log, status = gcl("deploy-dashboard", *backend)
    assert rc == 0 and status == {"deploy-dashboard": "PASS"}, tail(log)
    assert registry.get_by_status(name).version == "0.1.0"

    # 3. A merge request is compared with that history and production; the note links both pages.
    rc, log, status = gcl(*backend, *mr_args(DIGITOPS_GATE="warn"))
    assert rc == 0, tail(log)
    assert status["report"] in ("PASS", "WARN"), tail(log)
    body = fake.mr_notes()[-1]["body"]
    assert f"[production 0.1.0]({mlflow_guard.url}/#/models/{name}/versions/1)" in body, body
    assert re.search(rf"\[MLflow run\]\({re.escape(mlflow_guard.url)}/#/experiments/\d+/runs/\w+\)", body), body
    assert DUMMY_TOKEN not in log
    for path in (repo / ".gitlab-ci-local" / "artifacts").rglob("*"):
        if path.is_file():
            assert DUMMY_TOKEN.encode() not in path.read_bytes(), path
