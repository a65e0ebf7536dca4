"""Push -> MR note, installs included: the merge-request pipeline through gitlab-ci-local.

Runs .gitlab-ci.yml's merge-request pipeline (ci-image -> train -> evaluate -> report) with
gitlab-ci-local against the loopback fake GitLab (tests/fake_gitlab.py), each job in its own
copy of the repository, the way tests/test_ci_pipeline.py does, once per install path:

  preinstalled  the jobs use this checkout's .venv (DIGITOPS_SKIP_INSTALL=true): the figure
                measured so far, and about what the ci image (dependencies baked in) costs,
                less the image pull a runner does
  slim          each job installs into its own fresh virtual environment what CI installs now
                in the plain image (ci/install.sh: the core dependencies, `-e .`, with uv)
  slim-pip      the same installed with pip (DIGITOPS_INSTALLER=pip), as before uv: the
                "before" of the installer change, measured in the same run
  full          the core dependencies and every runtime extra (`.[dashboard,lab]`, with uv),
                i.e. what each job installed before the dependency split

The pip cache is warm (one untimed install fills $DIGITOPS_BENCH_PIP_CACHE first), as a
runner's cache restore would leave it; `pip_cache_mb` records what it holds afterwards (pip
keeps only cacheable index answers: behind a package mirror that marks them uncacheable it
stays empty, and every install downloads from the mirror). uv's cache starts empty in every
job (a job's container is new; uv's GitLab guide prunes downloaded wheels from CI caches,
since downloading them again is faster than restoring them). A `python`/`digitops` shim on PATH gives every job its
own venv and logs how long each install, training, evaluation and report command took, so the
wall time splits into install / train / evaluate / report / other (job start-up, copies,
artifacts, data fetch). `--quick` trains the tiny model instead of the ci profile and skips `full`.

    python bench/bench_ci.py [--quick] [--modes preinstalled,slim,slim-pip,full] [--unchanged preinstalled,slim]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODES = ("preinstalled", "slim", "slim-pip", "full")
SPECS = {"slim": ".", "slim-pip": ".", "full": ".[dashboard,lab]"}
INSTALLERS = {"slim-pip": "pip"}
PIP_CACHE = Path(os.environ.get("DIGITOPS_BENCH_PIP_CACHE") or Path.home() / ".cache" / "digitops" / "bench-pip")

# Every job gets its own venv (as every runner job starts from a clean image); the venv is
# created on the job's first `python` call, which is ci/install.sh's pip install.
PYTHON_SHIM = r"""#!/bin/sh
venv="$BENCH_VENVS/$CI_JOB_NAME"
if [ "$CI_JOB_NAME" = "ci-image" ]; then exec "$BENCH_BASE_PYTHON" "$@"; fi
start=$(date +%s.%N)
export UV_CACHE_DIR="$venv.uv-cache"
if [ ! -x "$venv/bin/python" ]; then "$BENCH_BASE_PYTHON" -m venv "$venv" || exit 1; fi
"$venv/bin/python" "$@"; rc=$?
echo "$CI_JOB_NAME|python $*|$start|$(date +%s.%N)" >> "$BENCH_LOG"
exit $rc
"""
DIGITOPS_SHIM = r"""#!/bin/sh
if [ -n "${BENCH_PREINSTALLED:-}" ]; then exe="$BENCH_PREINSTALLED"; else exe="$BENCH_VENVS/$CI_JOB_NAME/bin/digitops"; fi
start=$(date +%s.%N)
"$exe" "$@"; rc=$?
echo "$CI_JOB_NAME|digitops $*|$start|$(date +%s.%N)" >> "$BENCH_LOG"
exit $rc
"""


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def warm_pip_cache(spec: str) -> float:
    """Install ``spec`` once into a throwaway venv so the timed installs find a warm cache."""
    with tempfile.TemporaryDirectory(prefix="digitops-bench-warm-") as tmp:
        started = time.perf_counter()
        subprocess.run([_base_python(), "-m", "venv", f"{tmp}/venv"], check=True)
        subprocess.run([f"{tmp}/venv/bin/python", "-m", "pip", "install", "--quiet", "-e", spec],
                       cwd=ROOT, env={**os.environ, "PIP_CACHE_DIR": str(PIP_CACHE)}, check=True)
        return time.perf_counter() - started


def _split(log: Path) -> dict[str, Any]:
    """Seconds per kind of work (and install seconds per job), from the shim log (job|command|start|end lines)."""
    parts: dict[str, Any] = {"install": 0.0, "train": 0.0, "evaluate": 0.0, "report": 0.0, "install_by_job": {}}
    for line in log.read_text().splitlines() if log.exists() else []:
        job, command, start, end = line.split("|")
        seconds = float(end) - float(start)
        if re.match(r"python -m (uv )?pip (install|check)", command):
            parts["install"] += seconds
            parts["install_by_job"][job] = parts["install_by_job"].get(job, 0.0) + seconds
        elif command.startswith("digitops run train"):
            parts["train"] += seconds
        elif command.startswith("digitops run evaluate"):
            parts["evaluate"] += seconds
        elif command.startswith(("digitops report", "digitops publish")):
            parts["report"] += seconds
    return parts


def _venv_mb(path: Path) -> float:
    """Size of a folder in MB (du)."""
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True)
    return float(out.stdout.split()[0]) if out.returncode == 0 else float("nan")


def run_mode(mode: str, quick: bool, docs_only_push: bool = False) -> dict[str, Any]:
    """One merge-request pipeline, push -> note, with ``mode``'s installs.

    With ``docs_only_push``, a second pipeline follows in the same checkout (GitLab's cache
    kept, as a runner keeps it) after a commit that changes only README.md: training and
    evaluation inputs are unchanged, so both are reused. Returns the second pipeline's
    figures with the first's under ``first`` and whether train and evaluate were reused.
    """
    from fake_gitlab import FakeGitLab
    from test_ci_pipeline import MR_VARS, TINY, copy_checkout, mr_args, node_bin

    from digitops import data

    with tempfile.TemporaryDirectory(prefix=f"digitops-bench-ci-{mode}-") as tmp, \
            FakeGitLab(project_id=42, project_path="group/digitops", mr_iids=(7,)) as fake:
        work = Path(tmp)
        (work / "repo").mkdir()
        repo = copy_checkout(work / "repo", f"{fake.url}/group/digitops.git")
        shims, home, log = work / "shims", work / "home", work / "bench.log"
        shims.mkdir()
        home.mkdir()
        for name, text in (("python", PYTHON_SHIM), ("digitops", DIGITOPS_SHIM)):
            (shims / name).write_text(text)
            (shims / name).chmod(0o755)
        bin_dir = node_bin()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITOPS_", "CI_", "GITLAB_", "COMET_"))}
        env.update(
            PATH=os.pathsep.join([str(shims), str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"]),
            HOME=str(home), NO_COLOR="1", BENCH_LOG=str(log), BENCH_VENVS=str(work / "venvs"),
            BENCH_BASE_PYTHON=_base_python(),
        )
        if mode == "preinstalled":
            env["BENCH_PREINSTALLED"] = str(Path(sys.executable).with_name("digitops"))
        params = TINY if quick else ""
        args = [
            str(bin_dir / "gitlab-ci-local"), "--force-shell-executor", "--shell-isolation", "--no-color",
            "--home", str(home), "--ignore-predefined-vars", ",".join(MR_VARS),
            "--variable", f"CI_SERVER_URL={fake.url}",
            "--variable", f"DIGITOPS_SKIP_INSTALL={'true' if mode == 'preinstalled' else 'false'}",
            "--variable", f"DIGITOPS_PIP_SPEC={SPECS.get(mode, '.')}",
            "--variable", f"DIGITOPS_INSTALLER={INSTALLERS.get(mode, 'uv')}",
            "--variable", f"PIP_CACHE_DIR={PIP_CACHE}",
            "--variable", "DIGITOPS_BUILD_IMAGES=false", "--variable", "DIGITOPS_RUN_TESTS=false",
            "--variable", f"DIGITOPS_CACHE={data.default_cache_dir().parent}",
            "--variable", f"DIGITOPS_PARAMS={params}",
            "--variable", f"DIGITOPS_EVAL_PARAMS={'-p test_limit 1000' if quick else ''}",
            *mr_args(DIGITOPS_GATE="warn"),
        ]
        def pipeline() -> tuple[dict[str, Any], str]:
            log.unlink(missing_ok=True)
            started = time.perf_counter()
            proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - started
            output = proc.stdout + proc.stderr
            statuses = dict((job, status) for status, job in re.findall(r"^\s*(PASS|FAIL|WARN)\s+(\S+)", output, re.M))
            if proc.returncode != 0 or not fake.mr_notes() or "FAIL" in statuses.values():
                raise RuntimeError(f"{mode} pipeline failed ({proc.returncode}, {statuses}):\n{output[-4000:]}")
            parts = _split(log)
            by_job = parts.pop("install_by_job")
            return {
                "mode": mode, "push_to_note_seconds": wall, **{f"{k}_seconds": v for k, v in parts.items()},
                "other_seconds": wall - sum(parts.values()), "install_seconds_by_job": by_job, "jobs": statuses,
            }, output

        result, _ = pipeline()
        if mode != "preinstalled":
            train_venv = work / "venvs" / "train"
            result["job_venv_mb"] = _venv_mb(train_venv)
            # What a user of the slim install sees when they ask for the dashboard.
            said = subprocess.run([str(train_venv / "bin" / "digitops"), "dashboard", "--dry-run"],
                                  capture_output=True, text=True, cwd=repo, env={**env, "HOME": str(home)})
            result["dashboard_without_extra"] = (said.stderr.strip().splitlines() or [""])[-1]
        if not docs_only_push:
            return result
        readme = repo / "README.md"
        readme.write_text(readme.read_text() + "\nA docs-only change.\n")
        subprocess.run(["git", "commit", "-qam", "docs only"], cwd=repo, check=True, capture_output=True)
        shutil.rmtree(work / "venvs", ignore_errors=True)  # every runner job starts from a clean image again
        second, output = pipeline()
        body = fake.mr_notes()[0]["body"]
        return {**second, "first": result, "note_says_reused": "Inputs unchanged since run" in body,
                **{f"{stage}_reused": f"{stage}: inputs unchanged since run" in output
                   for stage in ("train", "evaluate")}}


def run(
    quick: bool = False, modes: tuple[str, ...] | None = None, unchanged: tuple[str, ...] = ("preinstalled", "slim")
) -> dict[str, Any]:
    """Every mode, one after the other; the pip cache is warmed first (untimed).

    For each mode in ``unchanged`` a second pipeline follows the first after a docs-only push,
    for the "training inputs unchanged" figure (reuse): "preinstalled" is the ci image's case
    (dependencies baked in), an install mode adds its installs.
    """
    modes = modes or (("preinstalled", "slim", "slim-pip") if quick else MODES)
    # pip's cache only: uv's starts empty in every job (see above).
    pip_modes = [m for m in SPECS if INSTALLERS.get(m) == "pip" and m in modes]
    warm = {spec: warm_pip_cache(spec) for spec in sorted({SPECS[m] for m in pip_modes})}
    out: dict[str, Any] = {
        "quick": quick, "profile": "tiny (limit 1000, 1 epoch, mlp)" if quick else "ci",
        "cpu_count": os.cpu_count(), "pip_cache_warmup_seconds": warm, "modes": {}, "unchanged": {},
        "load_average": {"before": os.getloadavg()[0]},
    }
    for mode in modes:
        if mode in unchanged:
            second = run_mode(mode, quick, docs_only_push=True)
            out["modes"][mode], out["unchanged"][mode] = second.pop("first"), second
        else:
            out["modes"][mode] = run_mode(mode, quick)
    out["pip_cache_mb"] = _venv_mb(PIP_CACHE) if PIP_CACHE.exists() else 0.0
    out["load_average"]["after"] = os.getloadavg()[0]
    return out


def table(r: dict[str, Any]) -> str:
    lines = [
        f"Push -> MR note through gitlab-ci-local ({r['profile']}, {r['cpu_count']} cores, warm pip cache)",
        f"  {'path':<13} {'push->note':>10} {'install':>8} {'train':>7} {'evaluate':>9} {'report':>7} {'other':>7}"
        f" {'venv':>8}",
    ]
    for mode, m in r["modes"].items():
        wall = m["push_to_note_seconds"]
        cells = [f"{m[k + '_seconds']:5.0f} s" for k in ("install", "train", "evaluate", "report", "other")]
        share = f"(install {m['install_seconds'] / wall:.0%})"
        venv = f"{m['job_venv_mb'] / 1024:5.2f} GB" if "job_venv_mb" in m else "-"
        lines.append(f"  {mode:<13} {wall:8.0f} s {cells[0]:>8} {cells[1]:>7} {cells[2]:>9} {cells[3]:>7} {cells[4]:>7}"
                     f" {venv:>8}  {share}")
    for mode, u in r.get("unchanged", {}).items():
        reused = "train and evaluate reused" if u["train_reused"] and u["evaluate_reused"] else \
            "NOT reused (train {train_reused}, evaluate {evaluate_reused})".format(**u)
        lines.append(f"  unchanged inputs ({mode}; docs-only push after the first pipeline): push->note "
                     f"{u['push_to_note_seconds']:.0f} s (install {u['install_seconds']:.0f} s, train "
                     f"{u['train_seconds']:.0f} s, evaluate {u['evaluate_seconds']:.0f} s); {reused}")
    slim, pip = r["modes"].get("slim", {}), r["modes"].get("slim-pip", {})
    if slim and pip:
        lines.append(f"  installs, uv vs pip (same run): {slim['install_seconds']:.0f} s vs {pip['install_seconds']:.0f} s"
                     f" ({pip['install_seconds'] / max(slim['install_seconds'], 1e-9):.1f}x less); push->note"
                     f" {slim['push_to_note_seconds']:.0f} s vs {pip['push_to_note_seconds']:.0f} s")
    if slim and not r.get("quick"):
        lines.append(f"  targets: slim push->note {slim['push_to_note_seconds']:.0f} s (at most 240 s)"
                     + "".join(f"; unchanged inputs ({m}) {u['push_to_note_seconds']:.0f} s (at most 60 s)"
                               for m, u in r.get("unchanged", {}).items()))
    if slim.get("dashboard_without_extra"):
        lines.append(f"  slim install, `digitops dashboard`: {slim['dashboard_without_extra']}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny training; preinstalled, slim and slim-pip only")
    ap.add_argument("--modes", help=f"comma-separated, of {','.join(MODES)}")
    ap.add_argument("--unchanged", default="preinstalled,slim",
                    help="modes that also get a docs-only second pipeline (reuse figure); 'none' skips it")
    ns = ap.parse_args()
    modes = tuple(ns.modes.split(",")) if ns.modes else None
    print(table(run(ns.quick, modes, () if ns.unchanged == "none" else tuple(ns.unchanged.split(",")))))
