"""One history per monitored deployment (a model name and a data source): every run appends the windows it judged,
with their metrics, checks, incidents and the version that served them, as immutable Parquet parts under one
folder or blob prefix; a window judged again (a full re-run) replaces its earlier row. The dashboard and one
long-lived MLflow run are drawn from it, so a daily schedule shows the whole timeline, not 365 islands."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pandas as pd

from common.prediction_dataset import filesystem
from monitoring.alerts import Alert
from monitoring.incidents import IncidentEvent

PART_PREFIX = "windows-"


def deployment_key(model_name: str, source: str) -> str:
    """A name for a monitored deployment that is safe as a folder, a blob prefix and an MLflow tag."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", source.rstrip("/")).strip("-")[-80:]
    return f"{model_name}--{slug}"


def history_rows(
    metrics: pd.DataFrame,
    checks: pd.DataFrame,
    alerts: list[Alert],
    incidents: list[IncidentEvent],
    model_version: str,
    run: str,
    judged_at: datetime,
) -> pd.DataFrame:
    """The windows one run judged, as history rows: the window metrics, the check status, the rules alerted, the
    incident events, the serving version, the run's outputs (`run`) and when it judged them."""
    alerted = pd.Series([alert.rule for alert in alerts], index=[alert.window for alert in alerts], dtype=object)
    events = pd.Series(
        [f"{event.event} {event.incident}" for event in incidents], index=[e.window for e in incidents], dtype=object
    )
    rows = metrics.copy()
    rows["status"] = rows["window"].map(dict(zip(checks["window"], checks["status"]))).fillna("skip")
    rows["cause"] = rows["window"].map(dict(zip(checks["window"], checks["cause"]))).fillna("")
    rows["alerts"] = rows["window"].map(alerted.groupby(level=0).agg(",".join) if len(alerted) else {}).fillna("")
    rows["incident_events"] = rows["window"].map(events.groupby(level=0).agg(";".join) if len(events) else {}).fillna("")
    rows["model_version"] = str(model_version)
    rows["run"] = run
    rows["judged_at"] = judged_at.astimezone(UTC).isoformat(timespec="seconds")
    return rows


def append_history(location: str, rows: pd.DataFrame) -> str:
    """Write `rows` as a new part of the history at `location` (a folder or az://container/prefix); its path."""
    fs, root = filesystem(location)
    fs.makedirs(root, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = f"{root.rstrip('/')}/{PART_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = path + ".tmp"
    with fs.open(temporary, "wb") as stream:
        rows.to_parquet(stream, index=False)
    fs.mv(temporary, path)  # a part appears whole or not at all
    return path


def read_history(location: str) -> pd.DataFrame:
    """Every window of the history, one row each (the latest judgement of a window), in window order."""
    fs, root = filesystem(location)
    if not fs.exists(root):
        return pd.DataFrame()
    parts = sorted(
        path for path in fs.find(root) if path.rsplit("/", 1)[-1].startswith(PART_PREFIX) and path.endswith(".parquet")
    )
    frames = []
    for path in parts:
        with fs.open(path, "rb") as stream:
            frames.append(pd.read_parquet(stream))
    if not frames:
        return pd.DataFrame()
    history = pd.concat(frames, ignore_index=True).sort_values(["window", "judged_at"], kind="stable")
    return history.drop_duplicates("window", keep="last").reset_index(drop=True)


def version_spans(history: pd.DataFrame) -> list[tuple[int, int, str]]:
    """(first window, last window, version) of each run of windows one version served, in order."""
    if history.empty:
        return []
    changes = (history["model_version"] != history["model_version"].shift()).cumsum()
    return [
        (int(group["window"].iloc[0]), int(group["window"].iloc[-1]), str(group["model_version"].iloc[0]))
        for _, group in history.groupby(changes, sort=True)
    ]


def incident_spans(history: pd.DataFrame) -> list[tuple[int, int]]:
    """(window opened, window resolved or the last one) of each incident the history records."""
    spans, opened = [], {}
    for window, text in zip(history["window"], history["incident_events"]):
        for event in filter(None, str(text).split(";")):
            kind, incident = event.split(" ", 1)
            if kind == "opened":
                opened[incident] = int(window)
            elif kind == "resolved" and incident in opened:
                spans.append((opened.pop(incident), int(window)))
    last = int(history["window"].iloc[-1]) if len(history) else 0
    return sorted(spans + [(start, last) for start in opened.values()])


def history_alerts(history: pd.DataFrame) -> list[Alert]:
    """The alerts a history records, as markers for its dashboard."""
    return [
        Alert(
            int(row.window),
            rule,
            "",
            float("nan"),
            float("nan"),
            rule,
            "",
            str(row.model_version),
            "",
            row.window_start,
            row.window_end,
        )
        for row in history.itertuples(index=False)
        for rule in filter(None, str(row.alerts).split(","))
    ]
