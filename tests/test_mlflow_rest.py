"""digitops.mlflow.rest against the real ``mlflow server`` behind the GitLab-subset guard, faults injected."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from digitops.mlflow import rest as rest_mod
from digitops.mlflow.rest import MlflowError, MlflowRefused, MlflowRest, MlflowUnavailable
from mlflow_fixtures import DUMMY_TOKEN
from mlflow_server import Guard, free_port

pytestmark = pytest.mark.network


@pytest.fixture
def client(mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> MlflowRest:
    monkeypatch.setattr(rest_mod, "BACKOFF", 0.01)  # keep retries quick; their number is what is tested
    return MlflowRest(timeout=5.0, retries=3)


def _experiment(client: MlflowRest) -> str:
    return client.experiment_id(f"exp-{uuid.uuid4().hex[:8]}")


def _run(client: MlflowRest, eid: str, **tags: str) -> dict:
    payload = {"experiment_id": eid, "start_time": int(time.time() * 1000),
               "tags": [{"key": k, "value": v} for k, v in tags.items()]}
    return client.call("POST", "runs/create", payload)["run"]


def test_defaults_come_from_the_environment(client: MlflowRest, mlflow_guard: Guard) -> None:
    assert client.uri == mlflow_guard.url
    assert DUMMY_TOKEN not in repr(client)


def test_get_retried_on_5xx_and_429_then_succeeds(client: MlflowRest, mlflow_guard: Guard) -> None:
    eid = _experiment(client)
    mlflow_guard.fail("experiments/get", status=502, times=1)
    mlflow_guard.fail("experiments/get", status=429, times=1, retry_after=0)
    before = mlflow_guard.count("GET", "experiments/get")
    got = client.call("GET", "experiments/get", {"experiment_id": eid})
    assert got["experiment"]["experiment_id"] == eid
    assert mlflow_guard.count("GET", "experiments/get") - before == 3


def test_post_retried_on_429_not_on_503(client: MlflowRest, mlflow_guard: Guard) -> None:
    eid = _experiment(client)
    mlflow_guard.fail("runs/create", status=429, times=1, retry_after=0)
    run = _run(client, eid)
    assert run["info"]["run_id"]
    assert mlflow_guard.count("POST", "runs/create") == 2
    mlflow_guard.fail("runs/create", status=503, times=1)
    with pytest.raises(MlflowUnavailable):
        _run(client, eid)
    assert mlflow_guard.count("POST", "runs/create") == 3  # one more: a 503 create is never repeated blindly


def test_persistent_503_is_unavailable_after_bounded_retries(client: MlflowRest, mlflow_guard: Guard) -> None:
    mlflow_guard.fail("experiments/get-by-name", status=503, times=100)
    with pytest.raises(MlflowUnavailable) as info:
        client.call("GET", "experiments/get-by-name", {"experiment_name": "x"})
    assert mlflow_guard.count("GET", "experiments/get-by-name") == 4  # 1 + retries, no more
    text = str(info.value)
    assert "unavailable" in text and "HTTP 503" in text and "after 4 attempts" in text and mlflow_guard.url in text


def test_retry_after_is_honoured_up_to_the_cap(client: MlflowRest, mlflow_guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(rest_mod.time, "sleep", slept.append)
    monkeypatch.setattr(rest_mod, "RETRY_AFTER_CAP", 3.0)
    mlflow_guard.fail("experiments/get-by-name", status=429, times=2, retry_after=1000)
    with pytest.raises(MlflowRefused):
        client.call("GET", "experiments/get-by-name", {"experiment_name": f"none-{uuid.uuid4().hex}"})
    assert slept == [3.0, 3.0]


def test_saved_then_5xx_create_is_not_duplicated(client: MlflowRest, mlflow_guard: Guard) -> None:
    eid = _experiment(client)
    mlflow_guard.fail("runs/create", status=503, saved=True)
    with pytest.raises(MlflowUnavailable):
        _run(client, eid, **{"digitops.run_id": "r-saved"})
    assert mlflow_guard.count("POST", "runs/create") == 1
    found = list(client.search_runs(eid, "tags.`digitops.run_id` = 'r-saved'"))
    assert len(found) == 1  # saved once: the caller finds it by its tag instead of creating again


def test_connection_refused_is_unavailable_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(rest_mod.time, "sleep", slept.append)
    client = MlflowRest(f"http://127.0.0.1:{free_port()}", DUMMY_TOKEN, timeout=2.0, retries=2)
    with pytest.raises(MlflowUnavailable) as info:
        client.call("POST", "runs/create", {"experiment_id": "1"})
    assert "unavailable" in str(info.value) and "after 3 attempts" in str(info.value)
    assert sum(slept) < 2.0 and len(slept) == 2  # bounded: two short backoffs, no long timeouts
    assert DUMMY_TOKEN not in str(info.value)


def test_guard_down_then_up(client: MlflowRest, mlflow_guard: Guard) -> None:
    mlflow_guard.down()
    with pytest.raises(MlflowUnavailable):
        client.call("GET", "experiments/get-by-name", {"experiment_name": "x"})
    mlflow_guard.up()
    assert _experiment(client)


def test_read_timeout_on_post_is_not_repeated(mlflow_guard: Guard) -> None:
    client = MlflowRest(timeout=0.3, retries=3)
    mlflow_guard.slow(1.0)
    with pytest.raises(MlflowUnavailable) as info:
        client.call("POST", "experiments/create", {"name": f"slow-{uuid.uuid4().hex[:6]}"})
    assert "Timeout" in str(info.value)
    mlflow_guard.slow(0)
    assert mlflow_guard.count("POST", "experiments/create") == 1


def test_4xx_is_refused_with_error_code(client: MlflowRest) -> None:
    with pytest.raises(MlflowRefused) as info:
        client.call("GET", "experiments/get-by-name", {"experiment_name": f"missing-{uuid.uuid4().hex}"})
    assert info.value.status == 404 and info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    name = f"dup-{uuid.uuid4().hex[:8]}"
    client.call("POST", "experiments/create", {"name": name})
    with pytest.raises(MlflowRefused) as info:
        client.call("POST", "experiments/create", {"name": name})
    assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"


def test_experiment_id_is_race_safe(client: MlflowRest, mlflow_guard: Guard) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    eid = client.experiment_id(name)
    # Another process created it between our lookup and our create: we read it again.
    mlflow_guard.fail("experiments/get-by-name", status=404, code="RESOURCE_DOES_NOT_EXIST")
    assert client.experiment_id(name) == eid
    assert mlflow_guard.count("POST", "experiments/create") == 2
    with pytest.raises(MlflowRefused):
        client.experiment_id(f"absent-{uuid.uuid4().hex}", create=False)


def test_guard_refuses_undocumented_endpoint(client: MlflowRest, mlflow_guard: Guard) -> None:
    with pytest.raises(MlflowRefused) as info:
        client.call("POST", "model-versions/search", {"filter": "name='x'"})
    assert info.value.status == 404 and info.value.error_code == "ENDPOINT_NOT_FOUND"
    assert [r[:2] for r in mlflow_guard.refused] == [("POST", "/api/2.0/mlflow/model-versions/search")]
    mlflow_guard.refused.clear()  # expected here; every other test keeps it empty


def test_token_never_in_exception_text(client: MlflowRest, mlflow_guard: Guard) -> None:
    # MLflow echoes the experiment name in its error message: the token must still not come back.
    with pytest.raises(MlflowRefused) as info:
        client.call("GET", "experiments/get-by-name", {"experiment_name": DUMMY_TOKEN})
    assert DUMMY_TOKEN not in str(info.value) and DUMMY_TOKEN not in repr(info.value)
    assert "***" in str(info.value)
    wrong = MlflowRest(mlflow_guard.url, "another-token", timeout=5.0, retries=0)
    with pytest.raises(MlflowRefused) as info:
        wrong.call("GET", "experiments/get-by-name", {"experiment_name": "x"})
    assert info.value.status == 401 and "another-token" not in str(info.value)
    mlflow_guard.refused.clear()  # the wrong token was refused on purpose


def test_search_runs_pages(client: MlflowRest, mlflow_guard: Guard) -> None:
    eid = _experiment(client)
    created = {_run(client, eid, kind="paged")["info"]["run_id"] for _ in range(23)}
    before = mlflow_guard.count("POST", "runs/search")
    found = [r["info"]["run_id"] for r in client.search_runs(eid, "tags.kind = 'paged'", page_size=10)]
    assert sorted(found) == sorted(created)
    assert mlflow_guard.count("POST", "runs/search") - before == 3
    assert len(list(client.search_runs(eid, page_size=10, max_results=15))) == 15


def test_artifact_roundtrip_is_byte_identical(client: MlflowRest, tmp_path: Path) -> None:
    eid = _experiment(client)
    run = _run(client, eid)
    src = tmp_path / "model.keras"
    src.write_bytes(os.urandom(300_000) + b"\x00\r\n end")
    client.upload_artifact(run, src)
    client.upload_artifact(run, src, name="copy.bin")
    got = client.download_artifact(run, "copy.bin", tmp_path / "out" / "copy.bin")
    assert got.read_bytes() == src.read_bytes()
    assert [p.name for p in got.parent.iterdir()] == ["copy.bin"]  # no temp file left behind
    with pytest.raises(MlflowError, match="plain file names"):
        client.upload_artifact(run, src, name="sub/model.keras")
    with pytest.raises(MlflowRefused):
        client.download_artifact(run, "absent.bin", tmp_path / "absent.bin")
    assert not (tmp_path / "absent.bin").exists()


def test_guard_down_cuts_kept_alive_connections_too(client: MlflowRest, mlflow_guard: Guard) -> None:
    import http.client

    eid = _experiment(client)  # the client's session now holds a kept-alive connection
    raw = http.client.HTTPConnection("127.0.0.1", mlflow_guard.port, timeout=5)
    raw.request("GET", "/health")
    raw.getresponse().read()
    seen = len(mlflow_guard.requests)
    mlflow_guard.down()
    with pytest.raises(MlflowUnavailable):
        client.call("GET", "experiments/get", {"experiment_id": eid})
    with pytest.raises(MlflowUnavailable):
        client.call("POST", "runs/create", {"experiment_id": eid})
    with pytest.raises((OSError, http.client.HTTPException)):
        raw.request("GET", "/health")
        raw.getresponse().read()
    assert len(mlflow_guard.requests) == seen  # nothing reached the guard while it was down
    mlflow_guard.refused.clear()  # the /health probe above (not in GitLab's subset) was refused before down
    mlflow_guard.up()
    assert client.call("GET", "experiments/get", {"experiment_id": eid})["experiment"]["experiment_id"] == eid


def test_guard_down_during_a_request_does_not_forward_it(client: MlflowRest, mlflow_guard: Guard) -> None:
    import threading

    name = f"late-{uuid.uuid4().hex[:8]}"
    outcome: list[BaseException | None] = []

    def create() -> None:
        try:
            client.call("POST", "experiments/create", {"name": name})
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    mlflow_guard.slow(3.0)  # ample time for down() to come first on a busy machine
    worker = threading.Thread(target=create)
    worker.start()
    while not mlflow_guard.count("POST", "experiments/create") and worker.is_alive():
        time.sleep(0.01)
    mlflow_guard.down()  # the request is in the guard (held by slow()) when the server goes away
    worker.join(30)
    assert mlflow_guard.wait_idle()  # the held request has left the guard, one way or the other
    mlflow_guard.slow(0.0)
    mlflow_guard.up()
    assert len(outcome) == 1 and isinstance(outcome[0], MlflowUnavailable)
    with pytest.raises(MlflowRefused) as info:
        client.call("GET", "experiments/get-by-name", {"experiment_name": name})
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"  # a server that was down saved nothing
