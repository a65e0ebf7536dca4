"""The run report: Markdown for a GitLab MR note and a standalone HTML page.

Both are rendered from the same :class:`~digitops.compare.Comparison` and
run record: a headline verdict, a metrics table (candidate / project mean /
project best / production, with deltas), the gate's reasons, training curves
and confusion matrix, parameters that differ from the production model's
run, per-class scores and links to the executed notebooks and the run.

The first line of the Markdown is a hidden marker
(``<!-- digitops-report:<model name> -->``) so a publisher can find the note
it posted earlier and edit it instead of adding another.

Links are relative to the report's folder unless a ``base_url`` is given (CI
passes the URL of the run folder in the job's artifacts); images can be
replaced by whatever the publisher uploaded (``image_links``). The report
only uses the run's recorded data, never the environment, and hides the
values of parameters whose names look like credentials.

Size (over 400 lines): the view both templates (Markdown and HTML) render, the report files, and the
shortening of a note over GitLab's limit (which could become its own module).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from digitops import __version__, config
from digitops.compare import (
    DEFAULT_METRIC,
    Comparison,
    Gate,
    compare,
    fmt_delta,
    fmt_value,
    label,
)
from digitops.registry.base import Registry
from digitops.tracking.base import RunRecord, Tracker

REPORT_MARKER_PREFIX = "<!-- digitops-report:"
MARKDOWN_FILE, HTML_FILE, JSON_FILE = "report.md", "report.html", "comparison.json"

#: images shown in the report: file in the run folder -> title
IMAGES: dict[str, str] = {
    "curves.png": "Training curves",
    "confusion.png": "Confusion matrix",
    "mistakes.png": "Worst mistakes",
}
#: executed notebooks linked from the report: file in the run folder -> title
NOTEBOOKS: dict[str, str] = {"train.html": "train notebook", "evaluate.html": "evaluate notebook"}
RUN_LINK = "run"

_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|private[_-]?key)", re.I)
_REDACTED = "(hidden)"


def report_marker(model_name: str | None = None) -> str:
    """The hidden first line that identifies this model's report note."""
    return f"{REPORT_MARKER_PREFIX}{model_name or config.model_name()} -->"


def experiment_title() -> str:
    """What the run's page is called where the active backend keeps it (the MR note's link text)."""
    try:
        backend = config.backend()
    except Exception:  # noqa: BLE001 - a misconfiguration is reported elsewhere; the link still needs a name
        return "experiment run"
    if backend == "mlflow":
        uri = config.env("MLFLOW_TRACKING_URI") or ""
        gitlab = (config.env("DIGITOPS_BACKEND") or "").lower() == "gitlab" or "/ml/mlflow" in uri
        return "GitLab candidate" if gitlab else "MLflow run"
    return "Comet experiment"


def _link(target: str, base_url: str | None) -> str:
    """``target`` as is when absolute, else relative or joined onto ``base_url``."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("/", "#", "![")):
        return target
    # Relative paths may hold spaces or parentheses, which end a Markdown link.
    rel = quote(target[2:] if target.startswith("./") else target, safe="/.-_~%")
    if base_url:
        return base_url.rstrip("/") + ("/" + rel if rel not in ("", ".") else "/")
    return rel or "."


def _md_code(text: str) -> str:
    """``text`` as an inline code span (no HTML escaping: code spans show entities literally)."""
    return "`" + text.replace("`", "'").replace("\n", " ") + "`"


def redacted(key: str, value: Any) -> Any:
    """``value``, or ``(hidden)`` when ``key`` names a secret (token, password, API key...): the one redaction rule."""
    return _REDACTED if _SECRET_KEY.search(key) else value


def _shown_param(key: str, value: Any) -> str:
    value = redacted(key, value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _md_cell(text: str) -> str:
    """Text safe inside a GitLab Markdown table cell."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


@dataclass
class _View:
    """What both renderers show, already formatted."""

    marker: str
    headline: str
    passed: bool
    run_id: str
    facts: list[tuple[str, str]]
    mean_header: str
    production_header: str
    rows: list[dict[str, str]]
    gate: str
    reasons: list[str]
    images: dict[str, str | None]  # file -> link / data URI, None when missing
    param_diff: list[tuple[str, str, str]] | None
    param_diff_note: str
    params: list[tuple[str, str]]
    per_class: list[tuple[str, str, str, str]]
    links: list[tuple[str, str]]
    footer: str
    #: "Inputs unchanged since run X; reused (...)." when the run reused an earlier one's results
    reuse: str | None = None


def _view(
    comparison: Comparison,
    run: RunRecord,
    *,
    base_url: str | None,
    images: Mapping[str, str | None],
    html_links: Mapping[str, str] | None,
    per_class: Mapping[str, Mapping[str, Any]] | None,
    generated_at: str | None,
) -> _View:
    # Long: one flat mapping of everything both templates show; splitting it would split the view.
    c = comparison
    facts = [("run", run.run_id), ("project", run.project), ("model", c.model_name)]
    if run.git_commit:
        facts.append(("commit", run.git_commit[:12]))
    if run.data_checksum:
        facts.append(("data", run.data_checksum))
    if "architecture" in run.params:
        facts.append(("architecture", str(run.params["architecture"])))

    rows = []
    for r in c.rows:
        rows.append(
            {
                "metric": label(r.metric) + ("" if r.higher_is_better else " (lower is better)"),
                "gate": "yes" if r.metric == c.metric else "",
                "candidate": fmt_value(r.metric, r.candidate),
                "mean": fmt_value(r.metric, r.mean),
                "delta_mean": fmt_delta(r.metric, r.delta_mean),
                "best": fmt_value(r.metric, r.best),
                "delta_best": fmt_delta(r.metric, r.delta_best),
                "production": fmt_value(r.metric, r.production),
                "delta_production": fmt_delta(r.metric, r.delta_production),
            }
        )

    from digitops.feedback import gate as field_gate  # the "field drawings" row, when the run was scored on them

    rows += field_gate.report_rows(run.metrics)
    params = [(k, _shown_param(k, v)) for k, v in sorted(run.params.items())]
    param_diff: list[tuple[str, str, str]] | None = None
    if not c.judged:
        note = "The production version could not be read, so no parameters to compare with."
    elif c.production_version is None:
        note = "No production model yet, so no parameters to compare with."
    elif c.production_params is None:
        note = f"The parameters of production {c.production_version}'s run ({c.production_run_id}) are not known here."
    else:
        prod = c.production_params
        param_diff = [
            (
                k,
                _shown_param(k, run.params[k]) if k in run.params else "—",
                _shown_param(k, prod[k]) if k in prod else "—",
            )
            for k in sorted(set(run.params) | set(prod))
            if run.params.get(k, _MISSING) != prod.get(k, _MISSING)
        ]
        note = (
            f"Parameters that differ from production {c.production_version} (run {c.production_run_id})"
            if param_diff
            else f"Same parameters as production {c.production_version} (run {c.production_run_id})."
        )

    pc_rows = []
    for cls, scores in sorted((per_class or {}).items(), key=lambda kv: str(kv[0])):
        pc_rows.append(
            (
                str(cls),
                fmt_value("precision", _num(scores.get("precision"))),
                fmt_value("recall", _num(scores.get("recall"))),
                str(scores.get("support", "—")),
            )
        )

    notebook_links = html_links if html_links is not None else {**{n: n for n in NOTEBOOKS}, RUN_LINK: "."}
    links = [(title, _link(notebook_links[n], base_url)) for n, title in NOTEBOOKS.items() if n in notebook_links]
    if RUN_LINK in notebook_links:
        links.append(("run folder", _link(notebook_links[RUN_LINK], base_url)))
    if run.url:
        links.append((experiment_title(), run.url))
    if c.production_url:
        links.append((f"production {c.production_version}", c.production_url))

    when = generated_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _View(
        marker=report_marker(c.model_name),
        headline=c.headline(),
        passed=c.passed,
        run_id=run.run_id,
        facts=facts,
        mean_header=f"Project mean (n={c.project_count})",
        production_header=f"Production {c.production_version}" if c.production_version else "Production",
        rows=rows,
        gate=c.gate.describe(c.metric),
        reasons=list(c.reasons),
        images={name: images.get(name) for name in IMAGES},
        param_diff=param_diff,
        param_diff_note=note,
        params=params,
        per_class=pc_rows,
        links=links,
        footer=f"digitops {__version__} · {when}",
        reuse=_reuse_note(run),
    )


def _reuse_note(run: RunRecord) -> str | None:
    from digitops.reuse import REUSED_FROM
    from digitops.wording import reuse_note

    return reuse_note(run.tags.get(REUSED_FROM["train"]), run.tags.get(REUSED_FROM["evaluate"]))


_MISSING = object()


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def render_markdown(
    comparison: Comparison,
    run: RunRecord,
    *,
    base_url: str | None = None,
    image_links: Mapping[str, str] | None = None,
    html_links: Mapping[str, str] | None = None,
    per_class: Mapping[str, Mapping[str, Any]] | None = None,
    generated_at: str | None = None,
) -> str:
    """The MR note in GitLab Markdown; its first line is :func:`report_marker`.

    ``image_links`` maps an image file name (``curves.png``, ``confusion.png``,
    ``mistakes.png``) to a URL, a path, or ready Markdown (``![..](..)``, as
    ``project.upload()`` returns); images it leaves out are reported missing.
    Without it, images are assumed next to the report. Images are never
    joined onto ``base_url`` (a publisher uploads them). ``html_links`` maps
    ``train.html`` / ``evaluate.html`` / ``run`` (the run folder) to links;
    relative ones are joined onto ``base_url`` when one is given. Without it,
    the notebooks and the run folder are assumed next to the report.
    """
    # Images stay relative even with base_url: the publisher uploads them and
    # swaps in GitLab's Markdown, because artifact URLs do not render in notes.
    images = dict(image_links if image_links is not None else {name: name for name in IMAGES})
    v = _view(
        comparison,
        run,
        base_url=base_url,
        images=images,
        html_links=html_links,
        per_class=per_class,
        generated_at=generated_at,
    )
    return _render_markdown_template(v)


def _render_markdown_template(v: Any) -> str:
    """``templates/report.md.j2`` filled with the view (the same view the HTML template gets)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("digitops", "templates"), autoescape=False, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters.update(cell=_md_cell, code=_md_code, image=_md_image,
                       summary=lambda text: html.escape(str(text), quote=False))
    return env.get_template("report.md.j2").render(v=v, image_titles=IMAGES)


def _md_image(name: str, target: str | None) -> str:
    if target is None:
        return f"_{IMAGES[name]} not available: `{name}` was not produced by this run._"
    if target.startswith("!["):
        return target
    return f"![{IMAGES[name].lower()}]({target})"


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(
        path.suffix.lower(), "application/octet-stream"
    )
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(
    comparison: Comparison,
    run: RunRecord,
    *,
    base_url: str | None = None,
    image_files: Mapping[str, str | os.PathLike] | None = None,
    html_links: Mapping[str, str] | None = None,
    per_class: Mapping[str, Mapping[str, Any]] | None = None,
    generated_at: str | None = None,
) -> str:
    """A standalone HTML page: images embedded as data URIs, so it is one file.

    ``image_files`` maps image file names to files on disk; missing ones are
    reported as not available.
    """
    import jinja2

    images = {name: _data_uri(Path(p)) for name, p in (image_files or {}).items()}
    v = _view(
        comparison,
        run,
        base_url=base_url,
        images=images,
        html_links=html_links,
        per_class=per_class,
        generated_at=generated_at,
    )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("digitops", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(v=v, image_titles=IMAGES)


def write_report(
    run_id: str,
    out_dir: str | os.PathLike | None = None,
    *,
    tracker: Tracker | None = None,
    registry: Registry | None = None,
    comparison: Comparison | None = None,
    metric: str = DEFAULT_METRIC,
    gate: Gate | None = None,
    model_name: str | None = None,
    base_url: str | None = None,
    image_links: Mapping[str, str] | None = None,
    run_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Compare ``run_id`` (unless ``comparison`` is given) and write the report files.

    Writes ``report.md``, ``report.html`` and ``comparison.json`` into
    ``out_dir`` (default: the run folder, ``$DIGITOPS_RUNS/<run_id>``) and
    returns their paths under the keys ``markdown``, ``html``, ``json``.
    Images and notebooks are looked up in ``run_dir`` (default: the run
    folder); images are copied next to the report, links to the notebooks
    are relative to ``out_dir``, or absolute under ``base_url`` (the URL of
    the run folder, as CI passes it).
    """
    # Long: gathers images, links and per-class numbers once for the three renderings.
    if tracker is None:
        from digitops.tracking import get_tracker

        tracker = get_tracker()
    run_folder = Path(run_dir) if run_dir is not None else config.runs_dir() / run_id
    out = Path(out_dir) if out_dir is not None else run_folder
    if comparison is None:
        comparison = compare(
            run_id, tracker=tracker, registry=registry, metric=metric, gate=gate, model_name=model_name
        )
    run = tracker.get_run(run_id)

    per_class = None
    metrics_file = run_folder / "metrics.json"
    if metrics_file.is_file():
        try:
            per_class = json.loads(metrics_file.read_text(encoding="utf-8")).get("per_class")
        except (OSError, ValueError, AttributeError):
            per_class = None  # a damaged metrics.json only costs the per-class table

    def rel(name: str) -> str:
        return Path(os.path.relpath(run_folder / name, out)).as_posix()

    out.mkdir(parents=True, exist_ok=True)
    # Images travel with the report (a publisher uploads what sits next to report.md).
    present_images: dict[str, Path] = {}
    for name in IMAGES:
        src = run_folder / name
        if src.is_file():
            dest = out / name
            if dest.resolve() != src.resolve():
                shutil.copyfile(src, dest)
            present_images[name] = dest
    md_images = dict(image_links) if image_links is not None else {n: n for n in present_images}
    # With base_url (the run folder's URL) links are relative to the run folder, else to the report.
    html_links = {n: (n if base_url else rel(n)) for n in NOTEBOOKS if (run_folder / n).is_file()}
    if run_folder.is_dir():
        html_links[RUN_LINK] = "." if base_url else rel(".")

    markdown = render_markdown(
        comparison, run, base_url=base_url, image_links=md_images, html_links=html_links, per_class=per_class
    )
    page = render_html(
        comparison, run, base_url=base_url, image_files=present_images, html_links=html_links, per_class=per_class
    )
    paths = {"markdown": out / MARKDOWN_FILE, "html": out / HTML_FILE, "json": out / JSON_FILE}
    paths["markdown"].write_text(markdown, encoding="utf-8")
    paths["html"].write_text(page, encoding="utf-8")
    data = comparison.to_dict()
    if data.get("production_params"):
        data["production_params"] = {k: redacted(k, v) for k, v in data["production_params"].items()}
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return paths


# --------------------------------------------------------------- shortening

#: what :func:`shorten_markdown` says at the top of a shortened note
SHORTENED_PREFIX = "**shortened:**"
_NAME_CHARS, _NAMES_SHOWN = 60, 8


def _blocks(body: str) -> list[str]:
    """``body`` cut at blank lines; a ``<details>`` element and a ``####`` heading with what follows stay whole."""
    blocks: list[str] = []
    current: list[str] = []
    depth = 0
    for line in body.split("\n"):
        stripped = line.strip()
        depth += stripped.startswith("<details") - (stripped == "</details>")
        if not stripped and depth <= 0 and current:
            if len(current) == 1 and current[0].startswith("#### "):
                current.append(line)  # a heading keeps what follows it
            else:
                blocks.append("\n".join(current))
                current = []
            continue
        if stripped or current:
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def _block_name(block: str) -> str:
    first = block.split("\n", 1)[0].strip()
    for start, name in (("- ", "gate reasons"), ("<sub>", "footer"), ("_", "note"), ("|", "table")):
        if first.startswith(start):
            return name
    if first.startswith("**") and "**" in first[2:]:
        first = first[2:].split("**", 1)[0]
    if first.startswith("<details"):
        found = re.search(r"<summary>(.*?)</summary>", block, re.S)
        first = html.unescape(found.group(1)) if found else "details"
    first = first.lstrip("#-*_ ").rstrip("*_ ")
    first = " ".join(first.split())
    return first if len(first) <= _NAME_CHARS else first[:_NAME_CHARS] + "..."


def _removal_order(blocks: list[str]) -> list[int]:
    """Indices of the blocks a note can lose, least important first.

    The verdict (``###`` headline), the facts line, the first table (the
    metrics) and the gate line are never dropped here. Then, each group
    from the end of the report up: ``<details>`` sections, ``####``
    sections (images), everything else (reasons, notes, links, footer).
    """
    keep: set[int] = set()
    table_seen = False
    for i, block in enumerate(blocks):
        facts = i > 0 and blocks[i - 1].startswith("### ") and not block.startswith("|")
        if block.startswith(("<!--", "### ", "**Gate:**")) or facts:
            keep.add(i)
        elif block.startswith("|") and not table_seen:
            keep.add(i)
            table_seen = True
    details = [i for i, b in enumerate(blocks) if b.startswith("<details") and i not in keep]
    headed = [i for i, b in enumerate(blocks) if b.startswith("#### ") and i not in keep]
    rest = [i for i in range(len(blocks)) if i not in keep and i not in details and i not in headed]
    return details[::-1] + headed[::-1] + rest[::-1]


def _notice(dropped: list[str], limit: int, full_report: str | None, everything: bool) -> str:
    names = dropped[:_NAMES_SHOWN] + ([f"{len(dropped) - _NAMES_SHOWN} more"] if len(dropped) > _NAMES_SHOWN else [])
    what = "everything but the verdict and the metrics" if everything else ", ".join(names)
    where = f"[report.html]({full_report})" if full_report else "report.html (`digitops report RUN`)"
    return (
        f"> {SHORTENED_PREFIX} the report is longer than GitLab's {limit:,}-character note limit; "
        f"left out: {_md_cell(what)}. Full report: {where}"
    )


def shorten_markdown(markdown: str, limit: int, *, full_report: str | None = None) -> tuple[str, list[str]]:
    """``markdown`` cut to at most ``limit`` characters, and the names of the sections left out.

    Unchanged (and ``[]``) when it fits. Otherwise whole sections are dropped in
    :func:`_removal_order` until it fits; if the verdict, the facts, the metrics
    table and the gate line alone are still too long, the note becomes the
    verdict and the metrics table. Either way a line under the verdict says
    ``shortened:``, what was left out and links ``full_report`` (report.html).
    """
    if len(markdown) <= limit:
        return markdown, []
    lines = markdown.split("\n")
    marker = lines[0] if lines and lines[0].startswith("<!--") else ""
    blocks = _blocks("\n".join(lines[1:] if marker else lines))
    order = _removal_order(blocks)

    def assemble(kept: list[str], notice: str) -> str:
        head = [marker] if marker else []
        at = next((i for i, b in enumerate(kept) if b.startswith("### ")), -1) + 1
        parts = kept[:at] + [notice] + kept[at:]
        return "\n".join(head) + ("\n" if head else "") + "\n\n".join(parts) + "\n"

    dropped: list[int] = []
    for index in order:
        dropped.append(index)
        names = [_block_name(blocks[i]) for i in sorted(dropped)]
        kept = [b for i, b in enumerate(blocks) if i not in dropped]
        text = assemble(kept, _notice(names, limit, full_report, False))
        if len(text) <= limit:
            return text, names
    # Last resort: the verdict and the metrics table, each cut to what fits.
    essentials = [b for b in blocks if b.startswith("### ")][:1] + [b for b in blocks if b.startswith("|")][:1]
    names = [_block_name(b) for b in blocks if b not in essentials]
    notice = _notice(names, limit, full_report, True)
    room = max(0, limit - len(assemble([], notice)) - 4 * len(essentials))
    cut = [b if len(b) <= room // max(len(essentials), 1) else b[: room // max(len(essentials), 1)] for b in essentials]
    text = assemble(cut, notice)
    return (text if len(text) <= limit else text[:limit]), names
