"""The GitLab CI files: GitLab's JSON schema, includes, needs, and the project's CI contract."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CI_FILES = [ROOT / ".gitlab-ci.yml", *sorted((ROOT / "ci").glob("*.yml"))]

#: Top-level keys of a GitLab CI file that are not jobs.
RESERVED = {"default", "include", "stages", "variables", "workflow", "image", "services", "cache",
            "before_script", "after_script", "spec"}
DEFAULT_STAGES = [".pre", "build", "test", "deploy", ".post"]
#: GitLab's rule for artifacts:expose_as values.
EXPOSE_AS_RE = re.compile(r"\A\w[-\w ]*\Z")


class _Loader(yaml.SafeLoader):
    """YAML loader that understands GitLab's ``!reference`` tag."""


_Loader.add_constructor("!reference", lambda loader, node: loader.construct_sequence(node))


def _load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of jobs")
    return data


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """GitLab's ``extends`` merge: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def load_ci(root: Path) -> tuple[dict[str, Any], list[str]]:
    """Merge ``.gitlab-ci.yml`` with its ``include: local`` files; return (config, problems)."""
    problems: list[str] = []
    merged: dict[str, Any] = {}
    seen: set[Path] = set()

    def visit(path: Path, via: str) -> None:
        if path in seen:
            problems.append(f"{via}: {path.relative_to(root)} is included twice")
            return
        seen.add(path)
        try:
            data = _load(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"{via}: cannot read {path.relative_to(root)}: {exc}")
            return
        for item in _as_list(data.pop("include", None)):
            local = item if isinstance(item, str) else item.get("local") if isinstance(item, dict) else None
            if local is None:
                if isinstance(item, dict) and {"remote", "template", "project", "component"} & set(item):
                    continue  # not resolvable offline; GitLab checks those
                problems.append(f"{path.relative_to(root)}: cannot read include entry {item!r}")
                continue
            matches = sorted(glob.glob(str(root / local.lstrip("/")), recursive=True))
            if not matches:
                problems.append(f"{path.relative_to(root)}: include {local!r} matches no file")
            for match in matches:
                visit(Path(match), f"{path.relative_to(root)} include {local!r}")
        for key, value in data.items():
            if key in merged and key not in ("variables",):
                problems.append(f"{path.relative_to(root)}: {key!r} is also defined in another file")
            merged[key] = _deep_merge(merged[key], value) if key == "variables" and key in merged else value

    visit(root / ".gitlab-ci.yml", "root")
    return merged, problems


def resolve_jobs(config: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Jobs (hidden templates excluded) with ``extends`` applied; problems for unknown templates."""
    problems: list[str] = []
    definitions = {k: v for k, v in config.items() if k not in RESERVED and isinstance(v, dict)}

    def resolved(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
        if name in chain:
            problems.append(f"extends cycle: {' -> '.join((*chain, name))}")
            return {}
        job = definitions[name]
        base: dict[str, Any] = {}
        for parent in _as_list(job.get("extends")):
            if parent not in definitions:
                problems.append(f"job {name!r} extends {parent!r}, which is not defined")
                continue
            base = _deep_merge(base, resolved(parent, (*chain, name)))
        return _deep_merge(base, {k: v for k, v in job.items() if k != "extends"})

    jobs = {name: resolved(name) for name in definitions if not name.startswith(".")}
    return jobs, problems


def check_ci(root: Path) -> list[str]:
    """Everything GitLab would reject in the merged config that a schema cannot see."""
    config, problems = load_ci(root)
    jobs, extend_problems = resolve_jobs(config)
    problems += extend_problems
    stages = config.get("stages", DEFAULT_STAGES)
    order = {stage: i for i, stage in enumerate([".pre", *stages, ".post"])}
    for name, job in jobs.items():
        stage = job.get("stage", "test")
        if stage not in order:
            problems.append(f"job {name!r}: stage {stage!r} is not in stages {stages}")
        if not (job.get("script") or job.get("trigger")):
            problems.append(f"job {name!r} has no script")
        for need in _as_list(job.get("needs")):
            target = need if isinstance(need, str) else need.get("job")
            if isinstance(need, dict) and ("project" in need or "pipeline" in need):
                continue  # cross-pipeline needs are resolved by GitLab
            if target not in jobs:
                problems.append(f"job {name!r} needs {target!r}, which is not a job")
            elif order.get(jobs[target].get("stage", "test"), 0) > order.get(stage, 0):
                problems.append(f"job {name!r} needs {target!r}, which runs in a later stage")
    return problems


# ------------------------------------------------------------------- tests


def test_every_ci_file_passes_gitlabs_schema() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.gitlab-ci", *map(str, CI_FILES)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(CI_FILES) >= 5  # root file + the job files


def test_schema_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("train:\n  script: [echo]\n  when: sometimes\n")
    exe = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run([str(exe), "--builtin-schema", "vendor.gitlab-ci", str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "sometimes" in result.stdout


def test_includes_and_needs_resolve() -> None:
    assert check_ci(ROOT) == []
    config, _ = load_ci(ROOT)
    jobs, _ = resolve_jobs(config)
    assert {"tests", "train", "evaluate", "report", "register", "deploy-dashboard"} <= set(jobs)
    # The root file holds the workflow and includes every job file in ci/.
    root = _load(ROOT / ".gitlab-ci.yml")
    included = {item["local"] for item in root["include"]}
    assert included == {f"ci/{p.name}" for p in CI_FILES[1:]}
    assert "workflow" in root and not any(k in root for k in jobs)


@pytest.fixture()
def ci_copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / ".gitlab-ci.yml", tmp_path / ".gitlab-ci.yml")
    shutil.copytree(ROOT / "ci", tmp_path / "ci")
    assert check_ci(tmp_path) == []
    return tmp_path


def test_checker_catches_a_broken_include(ci_copy: Path) -> None:
    root = ci_copy / ".gitlab-ci.yml"
    root.write_text(root.read_text().replace("local: ci/report.yml", "local: ci/reports.yml"))
    assert check_ci(ci_copy) == [".gitlab-ci.yml: include 'ci/reports.yml' matches no file"]
    # A job file that vanishes takes its jobs along: their dependents' needs break too.
    root.write_text(root.read_text().replace("local: ci/train.yml", "local: ci/training.yml"))
    problems = check_ci(ci_copy)
    assert ".gitlab-ci.yml: include 'ci/training.yml' matches no file" in problems
    assert "job 'register' needs 'evaluate', which is not a job" in problems


def test_checker_catches_a_missing_needs_target(ci_copy: Path) -> None:
    report = ci_copy / "ci" / "report.yml"
    report.write_text(report.read_text().replace("needs: [ci-image, evaluate]", "needs: [ci-image, evaluation]"))
    assert check_ci(ci_copy) == ["job 'report' needs 'evaluation', which is not a job"]


def test_checker_catches_needs_on_a_later_stage_and_unknown_templates(ci_copy: Path) -> None:
    train = ci_copy / "ci" / "train.yml"
    text = train.read_text().replace("  needs: [ci-image]\n", "  needs: [report]\n", 1)
    train.write_text(text.replace("extends: .model-pipeline", "extends: .model-pipelines", 1))
    problems = check_ci(ci_copy)
    assert "job 'train' needs 'report', which runs in a later stage" in problems
    assert "job 'train' extends '.model-pipelines', which is not defined" in problems


# ------------------------------------------------------ the project's contract


@pytest.fixture(scope="module")
def jobs() -> dict[str, dict[str, Any]]:
    config, problems = load_ci(ROOT)
    assert problems == []
    resolved, problems = resolve_jobs(config)
    assert problems == []
    return resolved


def test_no_secrets_in_the_yaml() -> None:
    config, _ = load_ci(ROOT)
    defined = set(config.get("variables", {}))
    for job in config.values():
        if isinstance(job, dict):
            defined |= set(job.get("variables") or {})
    assert not defined & {"GITLAB_TOKEN", "COMET_API_KEY", "CI_JOB_TOKEN", "DASHBOARD_TRIGGER_TOKEN"}
    token_like = re.compile(r"glpat-|glptt-|glcbt-|gldt-|PRIVATE-TOKEN|[A-Za-z0-9]{32,}")
    for path in CI_FILES:
        assert not token_like.search(path.read_text()), f"{path.name} holds something that looks like a secret"


def test_merge_request_jobs_chain_and_pass_ids(jobs: dict[str, dict[str, Any]]) -> None:
    assert jobs["train"]["needs"] == ["ci-image"]
    assert jobs["evaluate"]["needs"] == ["ci-image", "train"]
    assert jobs["report"]["needs"] == ["ci-image", "evaluate"]
    for name, env_file in (("train", "train.env"), ("evaluate", "evaluate.env"), ("register", "register.env")):
        assert jobs[name]["artifacts"]["reports"]["dotenv"] == env_file
        assert env_file in " ".join(jobs[name]["script"])
    # report needs only evaluate, so evaluate must hand TRAIN_JOB_ID on.
    assert any("TRAIN_JOB_ID=$TRAIN_JOB_ID" in line and "evaluate.env" in line for line in jobs["evaluate"]["script"])
    assert "digitops publish mr" in " ".join(jobs["report"]["script"])
    assert any("DIGITOPS_PARAMS_FILE" in line and "$DIGITOPS_PARAMS" in line for line in jobs["train"]["script"])


def test_gate_decides_the_report_status(jobs: dict[str, dict[str, Any]]) -> None:
    report = jobs["report"]
    script = "\n".join(report["script"])
    warn_code = report["allow_failure"]["exit_codes"]
    assert warn_code == [3]
    assert '"$DIGITOPS_GATE" = "warn" ]; then exit 3' in script and "exit 1" in script
    assert "--exit-code" in script
    # publishing comes before the verdict ends the job, so a failing candidate still gets its note
    assert script.index("digitops publish mr") < script.index("exit 1")


def test_notebooks_are_exposed_in_the_merge_request(jobs: dict[str, dict[str, Any]]) -> None:
    exposed = 0
    for name in ("train", "evaluate", "report"):
        artifacts = jobs[name]["artifacts"]
        assert EXPOSE_AS_RE.match(artifacts["expose_as"]), artifacts["expose_as"]
        assert artifacts["when"] == "always"
        shown = [p for p in artifacts["paths"] if not Path(p).name.startswith(".") and "." in Path(p).name]
        assert all("*" not in p and "$" not in p for p in shown)
        exposed += len(shown)
    assert exposed <= 10  # GitLab shows at most 10 exposed artifacts per MR
    paths = jobs["train"]["artifacts"]["paths"] + jobs["evaluate"]["artifacts"]["paths"]
    for wanted in ("train.html", "train.ipynb", "evaluate.html", "evaluate.ipynb"):
        assert f"notebooks-out/{wanted}" in paths
    assert jobs["tests"]["artifacts"]["reports"]["junit"] == "test-report.xml"


def test_register_and_deploy_only_on_the_default_branch(jobs: dict[str, dict[str, Any]]) -> None:
    for name in ("register", "deploy-dashboard"):
        (rule,) = jobs[name]["rules"]
        assert "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH" in rule["if"]
    deploy = jobs["deploy-dashboard"]
    assert deploy["rules"][0]["when"] == "manual" and deploy["allow_failure"] is True
    assert deploy["environment"]["name"] == "production" and deploy["environment"]["url"]
    script = "\n".join(deploy["script"])
    assert 'digitops registry promote "$MODEL_VERSION"' in script and "digitops publish trigger" in script
    assert deploy["needs"] == ["register", {"job": "dashboard-image", "optional": True}]


def test_pip_cache_and_install(jobs: dict[str, dict[str, Any]]) -> None:
    config, _ = load_ci(ROOT)
    assert config["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/pip"
    caches = config["default"]["cache"]
    assert any(c["paths"] == [".cache/pip"] for c in caches)
    assert config["default"]["image"].startswith("python:3.11")
    assert "sh ci/install.sh" in config["default"]["before_script"]
    # ci/install.sh itself is tested in test_ci_image.py. Only the report job leaves out Keras/TF.
    assert "tensorflow-cpu" in jobs["report"]["variables"]["DIGITOPS_INSTALL_WITHOUT"].split()
    assert not [n for n in ("train", "evaluate", "register") if "DIGITOPS_INSTALL_WITHOUT" in jobs[n].get("variables", {})]


def test_model_jobs_run_in_the_dependency_image_when_it_exists(jobs: dict[str, dict[str, Any]]) -> None:
    config, _ = load_ci(ROOT)
    assert config["variables"]["DIGITOPS_CI_IMAGE"] == "python:3.11-slim"  # the fallback
    for name in ("train", "evaluate", "report", "register"):
        assert jobs[name]["image"] == "$DIGITOPS_CI_IMAGE", name
        assert "ci-image" in jobs[name]["needs"], name  # its dotenv picks the image
    pick = jobs["ci-image"]
    assert pick["stage"] == ".pre" and pick["image"] == "python:3.11-slim" and pick["before_script"] == []
    assert pick["needs"] == [{"job": "build-ci-image", "optional": True}]
    assert pick["artifacts"]["reports"]["dotenv"] == "ci-image.env"
    assert pick["script"] == ["python ci/image.py --dotenv ci-image.env"]
    assert pick["rules"] == jobs["train"]["rules"]  # present in every pipeline that trains
    # The tests job needs the dev tools: it keeps the plain image and installs .[dev].
    assert "image" not in jobs["tests"] and jobs["tests"]["variables"]["DIGITOPS_PIP_SPEC"] == ".[dev]"


def test_images_are_built_by_buildah_only_when_needed(jobs: dict[str, dict[str, Any]]) -> None:
    for name in ("build-ci-image", "dashboard-image"):
        job = jobs[name]
        assert job["image"].startswith("quay.io/buildah/"), name
        assert job["variables"]["STORAGE_DRIVER"] == "vfs" and job["variables"]["BUILDAH_ISOLATION"] == "chroot"
        assert 'buildah login -u "$CI_REGISTRY_USER" --password-stdin' in job["before_script"][0]
        assert job["rules"][0] == {
            "if": '$DIGITOPS_BUILD_IMAGES == "false" || $CI_REGISTRY_IMAGE == null || $CI_REGISTRY_IMAGE == ""',
            "when": "never",
        }
        assert "services" not in job and "docker" not in " ".join(job["script"])  # no daemon
    build = jobs["build-ci-image"]
    assert build["stage"] == ".pre" and build["needs"] == []
    assert build["allow_failure"] is True  # a failed build leaves the model jobs the fallback, not a dead pipeline
    assert build["rules"][1]["changes"] == ["pyproject.toml", "ci/Dockerfile"]
    script = "\n".join(build["script"])
    assert 'tag="$(sh ci/deps-tag.sh)"' in script
    assert "--file ci/Dockerfile" in script and 'buildah push "$CI_REGISTRY_IMAGE/ci:$tag"' in script
    dash = jobs["dashboard-image"]
    assert "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH" in dash["rules"][1]["if"] and "changes" not in dash["rules"][1]
    script = "\n".join(dash["script"])
    assert "--file deploy/Dockerfile" in script and "--digestfile dashboard.digest" in script
    assert dash["artifacts"]["reports"]["dotenv"] == "dashboard-image.env"
    assert 'echo "DASHBOARD_IMAGE=$image@$(cat dashboard.digest)" > dashboard-image.env' in script
    # The manual deploy rolls out what dashboard-image pushed.
    assert 'sh deploy/deploy.sh "$DASHBOARD_IMAGE"' in "\n".join(jobs["deploy-dashboard"]["script"])


def test_train_exports_the_field_drawings_before_training(jobs: dict[str, dict[str, Any]]) -> None:
    """One export, made before training, travels in .digitops to evaluation: both use the same field set."""
    script = jobs["train"]["script"]
    export = next(i for i, line in enumerate(script) if "digitops feedback export --if-any" in line)
    assert export < next(i for i, line in enumerate(script) if "digitops run train" in line)
    assert ".digitops" in jobs["train"]["artifacts"]["paths"]


def test_model_jobs_carry_the_run_store_between_pipelines(jobs: dict[str, dict[str, Any]]) -> None:
    """The store and run folders are cached per branch: what lets an unchanged pipeline reuse a run."""
    config, _ = load_ci(ROOT)
    default = config["default"]["cache"]
    for name, policy in (("train", "pull"), ("evaluate", "push")):
        caches = jobs[name]["cache"]
        # A job's cache list replaces the default: the default caches must still be there.
        assert caches[: len(default)] == default, name
        (store,) = caches[len(default):]
        assert store["paths"] == [".digitops", "runs"] and store["policy"] == policy, name
        assert store["key"] == "runs-$CI_COMMIT_REF_SLUG" and store["fallback_keys"] == ["runs-$CI_DEFAULT_BRANCH"]
    assert "cache" not in jobs["report"] or jobs["report"]["cache"] == default


def test_backend_is_the_projects_variable_and_no_job_hard_codes_one(jobs: dict[str, dict[str, Any]]) -> None:
    config, _ = load_ci(ROOT)
    declared = config["variables"]["DIGITOPS_BACKEND"]
    # Empty in the file, so the project's CI/CD variable (DIGITOPS_BACKEND=gitlab) decides.
    assert declared["value"] == "" and "gitlab" in declared["description"]
    backend_vars = re.compile(r"^(DIGITOPS_BACKEND|MLFLOW_\w+|COMET_\w+)$")
    for name, job in jobs.items():
        assert not [v for v in job.get("variables") or {} if backend_vars.match(v)], name
        # (the test job unsets the backend variables: naming them there is the opposite of using them)
        script = "\n".join(str(line) for line in _as_list(job.get("script")) if not str(line).startswith("unset "))
        assert "comet" not in script.lower(), f"job {name!r} names Comet in its script"
        assert "--offline" not in script, name
    # GitLab's own endpoint from CI's predefined variables and the token the MR note already uses.
    from digitops import config as settings

    uri, token = settings.mlflow_endpoint(
        {"DIGITOPS_BACKEND": "gitlab", "CI_API_V4_URL": "https://gitlab.example.com/api/v4", "CI_PROJECT_ID": "42",
         "GITLAB_TOKEN": "t"}
    )
    assert (uri, token) == ("https://gitlab.example.com/api/v4/projects/42/ml/mlflow", "t")


def test_the_test_job_never_uses_the_projects_backend(jobs: dict[str, dict[str, Any]]) -> None:
    script = jobs["tests"]["script"]
    (unset,) = [i for i, line in enumerate(script) if line.startswith("unset ")]
    (pytest_line,) = [i for i, line in enumerate(script) if "pytest" in line]
    assert unset < pytest_line
    assert set(script[unset].split()[1:]) >= {"DIGITOPS_BACKEND", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
                                              "COMET_API_KEY"}


def _run_sh(script: str, tmp_path: Path, **env: str) -> tuple[int, str]:
    """Run a job's shell snippet with a stub `digitops` on PATH that logs its arguments."""
    stub = tmp_path / "bin" / "digitops"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/called\nexit "${{STUB_RC:-0}}"\n')
    stub.chmod(0o755)
    base = {"PATH": f"{stub.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["sh", "-c", script], cwd=tmp_path, env={**base, **env}, capture_output=True, text=True)
    called = (tmp_path / "called").read_text() if (tmp_path / "called").exists() else ""
    return proc.returncode, called


def test_kept_runs_are_sent_only_for_a_server_backend(jobs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    for name in ("report", "register"):
        assert jobs[name]["script"][0] == "sh ci/send-kept.sh"
    script = f"sh {ROOT / 'ci' / 'send-kept.sh'}"
    assert _run_sh(script, tmp_path) == (0, "")  # embedded: nothing to send
    assert _run_sh(script, tmp_path, DIGITOPS_BACKEND="embedded", MLFLOW_TRACKING_URI="http://x") == (0, "")
    # The server still unreachable (sync exits 2): said, and the job goes on.
    assert _run_sh(script, tmp_path, DIGITOPS_BACKEND="gitlab", STUB_RC="2") == (0, "sync\n")


def test_register_fails_when_the_registry_kept_a_pending_version(jobs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    (check,) = [line for line in jobs["register"]["script"] if "pending-" in line]
    (tmp_path / "register.env").write_text("MODEL_VERSION=pending-1\n")
    assert _run_sh(check, tmp_path)[0] == 1
    (tmp_path / "register.env").write_text("MODEL_VERSION=0.3.0\n")
    assert _run_sh(check, tmp_path)[0] == 0


def test_dashboard_deployment_reads_the_mlflow_registry_from_a_secret() -> None:
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("valueFrom", {}) for e in container["env"]}
    for name in ("DIGITOPS_BACKEND", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):
        assert env[name]["secretKeyRef"]["name"] == "digitops-mlflow", name
    deploy_sh = (ROOT / "deploy" / "deploy.sh").read_text()
    assert "create secret generic digitops-mlflow" in deploy_sh
    assert "--from-literal" not in deploy_sh  # a token on a command line shows in the runner's process list
