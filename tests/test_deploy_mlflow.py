"""deploy/mlflow: the team MLflow server's compose file (parsed; no Docker engine runs here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "deploy" / "mlflow"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((HERE / "compose.yaml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def _mlflow_pin() -> str:
    pin = re.search(r'"mlflow==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins mlflow in the dev extra"
    return pin[1]


def test_server_uses_postgres_and_object_storage_and_serves_artifacts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    mlflow = services["mlflow"]
    env = _env(mlflow)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "@postgres:5432/" in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    command = " ".join(mlflow["command"])
    assert re.search(r"--artifacts-destination[= ]s3://", command), command
    assert "--serve-artifacts" in command
    assert "--backend-store-uri" not in command  # read from the environment: no password in the arguments
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name in ("postgres", "minio", "mlflow"):
        assert compose["services"][name].get("healthcheck", {}).get("test"), name


def test_images_are_pinned_and_the_server_matches_the_tested_mlflow(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} names its image"
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    pin = _mlflow_pin()
    assert compose["services"]["mlflow"]["build"]["args"]["MLFLOW_VERSION"] == pin
    dockerfile = (HERE / "Dockerfile").read_text()
    assert f"ARG MLFLOW_VERSION={pin}" in dockerfile
    assert re.search(r"psycopg2-binary==[0-9.]+", dockerfile) and re.search(r"boto3==[0-9.]+", dockerfile)


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|USER|STORE_URI", key):
                # Every credential is interpolated from .env or the environment.
                assert "${" in str(value), f"{name}: {key} is written in the file"
    example = (HERE / "env.example").read_text()
    for line in example.splitlines():
        if re.match(r"\w*PASSWORD=", line):
            assert "change-me" in line, line
    ignored = subprocess.run(["git", "check-ignore", "-q", str(HERE / ".env")], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/mlflow/.env must be ignored by git"
