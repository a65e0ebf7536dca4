"""Comet queries: the project's experiments and metric summaries, in pages (cost grows with pages, not experiments)."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Iterator

from digitops import comet_env
from digitops.comet.state import REUSED_OTHER
from digitops.tracking.base import FINISHED, MetricSummary, TrackingError, summarise  # noqa: F401  summarise re-exported


def comet_api() -> Any:
    comet_ml = comet_env.import_comet()
    return comet_ml.API(cache=False)


def comet_workspace(api: Any) -> str:
    """``$COMET_WORKSPACE``, else the API key's default workspace."""
    return comet_env.workspace() or str(api.get_default_workspace())


def _experiments(api: Any, workspace: str, project: str) -> Iterator[Any]:
    from comet_ml.exceptions import NotFound

    try:
        yield from api.get_experiments(workspace, project_name=project)
    except NotFound:
        return  # no such project yet: no experiments


#: Experiments per ``experiments/multi-metric-chart`` request (the SDK's own page size for searches).
METRICS_PAGE = 100


def _query_keys(client: Any, workspace: str, project: str, columns: dict[str, Any], query: Any) -> set[str]:
    """Keys of the project's experiments matching ``query``: one ``project/query`` request.

    ``API.query`` would then fetch every match's metadata, one request each; its REST client's
    ``query_project`` answers with the keys alone. A filter on a column no experiment has
    (``QueryException``) matches nothing; any other failure raises.
    """
    from comet_ml.exceptions import QueryException

    try:
        predicates = query.get_predicates(columns)
    except QueryException:
        return set()
    keys = client.query_project(workspace, project, predicates, False).json().get("experimentKeys")
    if not isinstance(keys, list):
        raise TrackingError(f"Comet answered the query on {workspace}/{project} without experiment keys")
    return {str(k) for k in keys}


def _matching_keys(api: Any, workspace: str, project: str, exclude: set[str], data_checksum: str | None) -> set[str]:
    """Keys of the project's finished experiments on ``data_checksum`` whose run id is not in ``exclude``."""
    from comet_ml.query import Other

    client = api._client  # noqa: SLF001 - the REST client: see _query_keys
    columns = client.get_project_columns(workspace, project)
    if not isinstance(columns, dict) or not isinstance(columns.get("columns"), list):
        raise TrackingError(f"Comet answered the column names of {workspace}/{project} with {columns!r:.200}")
    wanted = Other("digitops_status") == FINISHED
    if data_checksum is not None:
        wanted = wanted & (Other("data_checksum") == data_checksum)
    keys = _query_keys(client, workspace, project, columns, wanted)
    # Excluded by positive queries, one per run id (compare excludes one): what "!=" does with an
    # experiment lacking the value is not documented, and this endpoint does not take "|".
    for run_id in sorted(exclude) if keys else []:
        keys -= _query_keys(client, workspace, project, columns, Other("digitops_run_id") == run_id)
    if keys:  # runs whose metrics are another run's (reused evaluation) count once, as that run
        keys -= _query_keys(client, workspace, project, columns, Other(REUSED_OTHER) == "1")
    return keys


def _current_values(api: Any, keys: list[str], metric: str) -> dict[str, float]:
    """The current (last logged) value of ``metric`` per experiment: one request per :data:`METRICS_PAGE` keys."""
    out: dict[str, float] = {}
    for i in range(0, len(keys), METRICS_PAGE):
        page = keys[i : i + METRICS_PAGE]
        # The REST client, not API.get_metrics_for_chart, which answers [] for a reply it cannot use.
        reply = api._client.get_experiment_multi_metrics(page, [metric], None, True, True).json()  # noqa: SLF001
        experiments = reply.get("experiments") if isinstance(reply, dict) else None
        if not isinstance(experiments, dict):
            raise TrackingError(f"Comet answered the metrics of {len(page)} experiments with {reply!r:.200}")
        for key, data in experiments.items():
            if key not in page:
                continue  # never an experiment that was not asked for
            for series in (data or {}).get("metrics") or []:
                values = series.get("values") or []
                if series.get("metricName") != metric or not values:
                    continue
                stamps = list(series.get("timestamps") or []) + [0] * len(values)
                # Comet's current value is the last one logged: the latest timestamp, the last on a tie.
                last = max(range(len(values)), key=lambda j: (stamps[j] or 0, j))
                try:
                    value = float(values[last])  # sent as strings, like the summaries
                except (TypeError, ValueError):
                    continue
                if not math.isnan(value):
                    out[str(key)] = value
    return out


def comet_metric_summary(
    metric: str,
    *,
    project: str,
    exclude: Iterable[str] = (),
    data_checksum: str | None = None,
    higher_is_better: bool = True,
) -> MetricSummary:
    """:meth:`Tracker.metric_summary` computed from Comet's project experiments (no local fallback).

    Multi-experiment reads, so the cost grows with pages, not experiments: the project listing
    (names, keys, start times), the column names and one ``project/query`` for the filters
    (``digitops_status`` is finished, same ``data_checksum``), one more per excluded run id, and
    one ``experiments/multi-metric-chart`` per :data:`METRICS_PAGE` matching experiments.
    Experiments without a ``digitops_status`` (not logged by digitops) do not count. Any failure
    raises: a partial history is no history.
    """
    api = comet_api()
    workspace = comet_workspace(api)
    excluded = {str(e) for e in exclude}
    listed = {exp.key: exp for exp in _experiments(api, workspace, project)}
    listed = {k: e for k, e in listed.items() if k not in excluded and e.name not in excluded}
    keys = sorted(_matching_keys(api, workspace, project, excluded, data_checksum) & set(listed)) if listed else []
    values = _current_values(api, keys, metric) if keys else {}
    found = [
        (value, str(listed[key].name or key), int(listed[key].start_server_timestamp or 0))
        for key, value in values.items()
        if key in listed
    ]
    return summarise(metric, found, higher_is_better)

