"""The report: golden Markdown structure, GitLab-renderable pieces, HTML page, links, no secrets."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import mistune
import pytest
from click.testing import CliRunner

from digitops.compare import compare
from digitops.registry.sqlite import SqliteRegistry
from digitops.report import (
    REPORT_MARKER_PREFIX,
    render_html,
    render_markdown,
    report_marker,
    write_report,
)
from digitops.tracking.sqlite import SqliteTracker
from store_helpers import DATA, add_run, keras_model_file

FAKE_COMET_KEY = "cmt-FAKE-KEY-5b1e0c9d2f7a4e8b"
FAKE_GITLAB_TOKEN = "FAKE-GITLAB-TOKEN-x9y8z7w6v5"
# The smallest valid PNG (1x1 transparent pixel).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture
def setup(workdir: Path) -> tuple[SqliteTracker, SqliteRegistry, Path]:
    """Three earlier runs, a production version and a candidate with a full run folder."""
    tracker, reg = SqliteTracker(), SqliteRegistry()
    add_run(tracker, "old-1", {"test_accuracy": 0.95, "test_loss": 0.2})
    add_run(tracker, "old-2", {"test_accuracy": 0.97, "test_loss": 0.1})
    add_run(tracker, "prod", {"test_accuracy": 0.96, "test_loss": 0.15},
            params={"architecture": "mlp", "epochs": 2, "learning_rate": 0.001, "seed": 0})
    model = keras_model_file(workdir / "runs" / "prod" / "model.keras")
    reg.register("mnist-digits", model, "prod", metrics={"test_accuracy": 0.96, "test_loss": 0.15},
                 status="production")
    add_run(
        tracker,
        "cand",
        {"test_accuracy": 0.9712, "test_loss": 0.09, "val_accuracy": 0.97, "train_seconds": 12.3},
        params={"architecture": "cnn", "epochs": 2, "learning_rate": 0.0005, "seed": 0, "note": "a|b <i>"},
        history={"loss": [0.5, 0.2], "accuracy": [0.9, 0.95]},
    )
    folder = workdir / "runs" / "cand"
    folder.mkdir(parents=True)
    for name in ("curves.png", "confusion.png", "mistakes.png"):
        (folder / name).write_bytes(PNG)
    for name in ("train.html", "evaluate.html"):
        (folder / name).write_text("<html>executed</html>")
    per_class = {str(d): {"precision": 0.97, "recall": 0.96, "support": 100 + d} for d in range(10)}
    (folder / "metrics.json").write_text(json.dumps({"run_id": "cand", "per_class": per_class}))
    return tracker, reg, folder


def _md(tracker: SqliteTracker, reg: SqliteRegistry, **kwargs) -> str:
    c = compare("cand", tracker=tracker, registry=reg)
    return render_markdown(c, tracker.get_run("cand"), generated_at="2026-11-28 15:30 UTC", **kwargs)


def test_markdown_golden_structure(setup) -> None:
    tracker, reg, _ = setup
    md = _md(tracker, reg, per_class={"0": {"precision": 0.99, "recall": 0.98, "support": 980}})
    lines = md.splitlines()
    assert lines[0] == "<!-- digitops-report:mnist-digits -->" == report_marker()
    assert lines[1] == "### ✅ Candidate passes the gate: test accuracy 97.12 % (+1.12 pts vs production 0.1.0)"
    assert lines[2] == ""
    assert lines[3].startswith("run `cand` · project `digitops` · model `mnist-digits` · commit `aaaaaaaaaaaa`")
    assert f"data `{DATA}`" in lines[3] and "architecture `cnn`" in lines[3]

    header = ("| Metric | Candidate | Project mean (n=3) | Δ vs mean | Project best | Δ vs best "
              "| Production 0.1.0 | Δ vs production |")
    table = lines.index(header)
    assert lines[table + 1] == "| :-- | --: | --: | --: | --: | --: | --: | --: |"
    assert lines[table + 2] == "| **test accuracy** | 97.12 % | 96.00 % | +1.12 pts | 97.00 % | +0.12 pts | 96.00 % | +1.12 pts |"
    assert lines[table + 3].startswith("| test loss (lower is better) | 0.09 | 0.15 | -0.06 | 0.1 | -0.01 | 0.15 | -0.06 |")
    assert lines[table + 4].startswith("| val accuracy | 97.00 % | — | — | — | — | — | — |")
    assert lines[table + 5].startswith("| train seconds (lower is better) | 12.3 s |")
    assert "**Gate:** test accuracy ≥ production − 0.20 pts and ≥ 90.00 % (floor)" in lines
    assert "- Test accuracy is 1.12 pts better than production 0.1.0 (96.00 %)." in lines

    # Sections in order; images relative to the report.
    order = ["#### Training curves", "![training curves](curves.png)", "#### Confusion matrix",
             "![confusion matrix](confusion.png)",
             "<summary>Parameters that differ from production 0.1.0 (run prod): 3</summary>",
             "<summary>All parameters (5)</summary>", "<summary>Per-class precision and recall</summary>",
             "<summary>Worst mistakes</summary>", "![worst mistakes](mistakes.png)"]
    positions = [lines.index(item) for item in order]
    assert positions == sorted(positions)
    # Parameter diff: only what differs, escaped for a table cell.
    diff = lines[lines.index(order[4]):]
    diff = diff[: diff.index("</details>")]
    assert "| architecture | cnn | mlp |" in diff and "| learning_rate | 0.0005 | 0.001 |" in diff
    assert "| note | a\\|b &lt;i&gt; | — |" in diff
    assert not any(row.startswith(("| epochs", "| seed")) for row in diff)
    assert "| 0 | 99.00 % | 98.00 % | 980 |" in lines
    # GitLab renders Markdown inside <details> only with blank lines around it.
    assert md.count("<details>") == md.count("</details>") == 4
    for i, line in enumerate(lines):
        if line.startswith("<summary>"):
            assert lines[i - 1] == "<details>" and lines[i + 1] == ""
        if line == "</details>":
            assert lines[i - 1] == ""
    assert lines[-3] == "**Links:** [train notebook](train.html) · [evaluate notebook](evaluate.html) · [run folder](.)"
    assert lines[-1] == "<sub>digitops 0.1.0 · 2026-11-28 15:30 UTC</sub>"


def test_markdown_renders_as_tables_and_details(setup) -> None:
    # mistune (nbconvert's Markdown engine) stands in for GitLab's GFM: the tables must parse as tables.
    tracker, reg, _ = setup
    rendered = mistune.create_markdown(escape=False, plugins=["table"])(_md(tracker, reg))
    assert rendered.count("<table>") == 3  # metrics, parameter diff, all parameters
    assert '<td style="text-align:left"><strong>test accuracy</strong></td>' in rendered
    assert rendered.count("<details>") == 3
    assert '<img src="curves.png" alt="training curves"' in rendered


def test_links_with_a_base_url_and_uploaded_images(setup) -> None:
    tracker, reg, _ = setup
    tracker.set_url("cand", "https://www.comet.com/ws/digitops/abc123")
    uploaded = "![curves](/uploads/0123abcd/curves.png)"
    md = _md(
        tracker,
        reg,
        base_url="https://gitlab.example.com/g/p/-/jobs/42/artifacts/file/runs/cand/",
        image_links={"curves.png": uploaded, "confusion.png": "https://cdn.example.com/c.png"},
        html_links={"train.html": "train.html", "evaluate.html": "evaluate.html", "run": "."},
    )
    base = "https://gitlab.example.com/g/p/-/jobs/42/artifacts/file/runs/cand"
    assert f"[train notebook]({base}/train.html)" in md
    assert f"[evaluate notebook]({base}/evaluate.html)" in md
    assert f"[run folder]({base}/)" in md
    assert "[Comet experiment](https://www.comet.com/ws/digitops/abc123)" in md
    assert uploaded in md.splitlines()
    assert "![confusion matrix](https://cdn.example.com/c.png)" in md
    # Left out of image_links: reported missing, not linked.
    assert "_Worst mistakes not available: `mistakes.png` was not produced by this run._" in md


def test_no_production_and_missing_images(workdir: Path) -> None:
    tracker, reg = SqliteTracker(), SqliteRegistry()
    add_run(tracker, "solo", {"test_accuracy": 0.93})
    paths = write_report("solo", workdir / "out", tracker=tracker, registry=reg)
    md = paths["markdown"].read_text()
    assert md.splitlines()[1] == (
        "### ✅ Candidate passes the gate: test accuracy 93.00 % (no production model yet; floor 90.00 %)"
    )
    assert "| Production | Δ vs production |" in md.splitlines()[5]
    assert "_No production model yet, so no parameters to compare with._" in md
    for name in ("curves.png", "confusion.png", "mistakes.png"):
        assert f"`{name}` was not produced by this run" in md
    assert "**Links:**" not in md  # no run folder, no notebooks, no URL: nothing to link
    page = paths["html"].read_text()
    assert "<img" not in page and "Training curves not available" in page
    assert json.loads(paths["json"].read_text())["verdict"] == "pass"


def test_write_report_files_and_relative_links(setup, workdir: Path) -> None:
    tracker, reg, folder = setup
    paths = write_report("cand", workdir / "public" / "report", tracker=tracker, registry=reg)
    out = workdir / "public" / "report"
    assert paths == {"markdown": out / "report.md", "html": out / "report.html", "json": out / "comparison.json"}
    md = paths["markdown"].read_text()
    assert md.startswith(REPORT_MARKER_PREFIX + "mnist-digits -->\n")
    # Images travel with the report; notebooks are linked where they are.
    for name in ("curves.png", "confusion.png", "mistakes.png"):
        assert (out / name).read_bytes() == PNG
    assert "[train notebook](../../runs/cand/train.html)" in md
    assert "[run folder](../../runs/cand)" in md
    assert "| 9 | 97.00 % | 96.00 % | 109 |" in md  # per-class table from metrics.json
    comparison = json.loads(paths["json"].read_text())
    assert comparison["run_id"] == "cand" and comparison["production_version"] == "0.1.0"

    # Default: next to the run's files, so links are plain names.
    md = write_report("cand", tracker=tracker, registry=reg)["markdown"].read_text()
    assert (folder / "report.md").is_file()
    assert "[train notebook](train.html)" in md and "![training curves](curves.png)" in md


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.img: list[str] = []
        self.href: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.img.append(a.get("src") or "")
        elif tag == "a":
            self.href.append(a.get("href") or "")
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def test_html_is_one_standalone_page(setup, workdir: Path) -> None:
    tracker, reg, _ = setup
    page = write_report("cand", workdir / "out", tracker=tracker, registry=reg)["html"].read_text()
    parsed = _Collector()
    parsed.feed(page)
    assert parsed.open == []  # every element closed, in order
    assert len(parsed.img) == 3 and all(src.startswith("data:image/png;base64,") for src in parsed.img)
    assert base64.b64decode(parsed.img[0].split(",", 1)[1]) == PNG
    assert "../runs/cand/train.html" in parsed.href
    assert '<h1 class="pass" id="headline">✅ Candidate passes the gate' in page
    assert "a|b &lt;i&gt;" in page  # parameters are escaped, not interpreted
    assert "<td>architecture</td><td>cnn</td><td>mlp</td>" in page
    assert page.count("<tr") >= 4 + 10  # metrics rows + per-class rows

    c = compare("cand", tracker=tracker, registry=reg)
    bare = render_html(c, tracker.get_run("cand"), image_files={"curves.png": workdir / "nope.png"})
    assert "Training curves not available" in bare and "<img" not in bare


def test_no_secrets_in_any_output(setup, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker, reg, _ = setup
    monkeypatch.setenv("COMET_API_KEY", FAKE_COMET_KEY)
    monkeypatch.setenv("GITLAB_TOKEN", FAKE_GITLAB_TOKEN)
    # A careless notebook that logged credentials as parameters must not leak them either.
    tracker.log_params("cand", {"gitlab_token": FAKE_GITLAB_TOKEN, "comet_api_key": FAKE_COMET_KEY})
    tracker.log_params("prod", {"COMET_API_KEY": FAKE_COMET_KEY})
    paths = write_report("cand", workdir / "out", tracker=tracker, registry=reg)
    for path in paths.values():
        text = path.read_text()
        assert FAKE_COMET_KEY not in text and FAKE_GITLAB_TOKEN not in text, path.name
        assert "cmt-FAKE" not in text and "FAKE-GITLAB" not in text, path.name
    md = paths["markdown"].read_text()
    assert "| gitlab_token | (hidden) |" in md and "| comet_api_key | (hidden) |" in md


def test_report_cli(setup, workdir: Path) -> None:
    from digitops.cli import cli

    tracker, _, _ = setup
    add_run(tracker, "weak", {"test_accuracy": 0.91})
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "cand", "--out", str(workdir / "r"),
                              "--base-url", "https://ci.example.com/artifacts/runs/cand"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("✅ Candidate passes the gate")
    assert f"markdown: {workdir / 'r' / 'report.md'}" in res.output
    assert "(https://ci.example.com/artifacts/runs/cand/train.html)" in (workdir / "r" / "report.md").read_text()

    res = runner.invoke(cli, ["report", "weak", "--out", str(workdir / "w")])
    assert res.exit_code == 0 and (workdir / "w" / "report.md").is_file()  # written even when failing
    assert runner.invoke(cli, ["report", "weak", "--out", str(workdir / "w"), "--exit-code"]).exit_code == 1
    res = runner.invoke(cli, ["report", "ghost"])
    assert res.exit_code == 2 and "unknown run 'ghost'" in res.output
    assert re.search(r"Exit status:.*2\s+error", runner.invoke(cli, ["report", "--help"]).output, re.S)


def test_the_run_link_is_named_after_the_backend_that_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from digitops.report import experiment_title

    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.setenv("DIGITOPS_BACKEND", "gitlab")
    assert experiment_title() == "GitLab candidate"
    monkeypatch.setenv("DIGITOPS_BACKEND", "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert experiment_title() == "MLflow run"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://gitlab.example.com/api/v4/projects/4/ml/mlflow")
    assert experiment_title() == "GitLab candidate"
    monkeypatch.setenv("DIGITOPS_BACKEND", "comet")
    assert experiment_title() == "Comet experiment"
