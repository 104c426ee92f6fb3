"""A simulation run: plan, send, keep the sidecar, draw the schedule, log an MLflow run; resumable."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from common.settings import Settings
from common.tracking import describe_run, log_frame_input, use_tracking
from simulation.client import LiveClock, SendStats, Transport, send_plan
from simulation.pools import load_pools
from simulation.scenario import PlannedRequest, Scenario, intended_mix, parse_scenario, plan_traffic, realised_mix
from simulation.schedule_plot import schedule_figure, write_schedule_html
from simulation.sidecar import GroundTruthSidecar

log = logging.getLogger(__name__)

SCENARIO_FILE = "scenario.yaml"
STATE_FILE = "state.json"
SIDECAR_FILE = "ground_truth.db"


@dataclass(frozen=True)
class SimulationResult:
    run_dir: Path
    stats: SendStats
    planned: int
    mlflow_run_id: str | None


def prepare_run_dir(run_dir: Path, scenario: Scenario | None) -> Scenario:
    """A new run folder keeps the scenario it was started with; an existing one gives it back to resume."""
    saved = run_dir / SCENARIO_FILE
    if saved.is_file():
        return parse_scenario(yaml.safe_load(saved.read_text()), str(saved))
    if scenario is None:
        raise FileNotFoundError(f"{run_dir}: no {SCENARIO_FILE} to resume from; start a run with --scenario")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(scenario.to_dict(), sort_keys=False))
    return scenario


def run_simulation(
    scenario: Scenario | None,
    run_dir: Path,
    transport: Transport,
    settings: Settings,
    concurrency: int = 8,
    rate: float | None = None,
    track: bool = True,
    until_window: int | None = None,
    progress: bool = True,
    live_window_s: int | None = None,
) -> SimulationResult:
    """Send the scenario's traffic (skipping what an earlier run of `run_dir` already delivered); with
    `until_window`, only the windows before it (a later call on the same folder sends the rest); `progress`: a
    progress bar on the terminal. With `live_window_s`, live: each scenario window lasts that many seconds of
    wall-clock time from the next multiple of it, its requests spread evenly across it and sent without a window,
    as real clients send them (the monitor then judges them by time: --window of the same length)."""
    scenario = prepare_run_dir(run_dir, scenario)
    pools = load_pools(scenario, settings.data_dir)
    plan = plan_traffic(scenario, {name: len(digits) for name, digits in pools.items()})
    if until_window is not None:
        plan = [request for request in plan if request.window < until_window]
    intended = intended_mix(scenario)
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    sidecar = GroundTruthSidecar(run_dir / SIDECAR_FILE)
    bar = tqdm(total=len(plan), unit="req", desc=scenario.name, dynamic_ncols=True, mininterval=0.5, disable=not progress)
    last_window = [-1]

    def on_progress(request, stats: SendStats) -> None:
        bar.update(1)
        if request.window != last_window[0]:
            last_window[0] = request.window
            mix = " ".join(f"{name} {share:.0%}" for name, share in zip(scenario.source_names, intended[request.window]) if share)
            bar.set_postfix_str(
                f"{scenario.window} {request.window + 1}/{scenario.windows} | {mix} | {stats.requests_per_s:.0f} req/s",
                refresh=False,
            )

    run_id = None
    if track:
        use_tracking(settings)
        active = mlflow.start_run(
            run_id=state.get("mlflow_run_id"), run_name=state.get("run_name") or f"simulate-{scenario.name}"
        )
        run_id = active.info.run_id
        state.update(mlflow_run_id=run_id, run_name=active.info.run_name)
        state_path.write_text(json.dumps(state))
        mlflow.set_tags({"digitdrift.job": "simulate", "scenario": scenario.name})
        if not state.get("params_logged"):
            mlflow.log_params(
                {
                    "scenario": scenario.name,
                    "seed": scenario.seed,
                    "windows": scenario.windows,
                    "window": scenario.window,
                    "requests_per_window": scenario.requests_per_window,
                    "images_per_request": scenario.images_per_request,
                    "mode": scenario.mode,
                    "concurrency": concurrency,
                    "rate": rate,
                    "live_window_s": live_window_s,
                    "run_dir": str(run_dir),
                }
            )
            mlflow.log_artifact(str(run_dir / SCENARIO_FILE))
            log_frame_input(plan_frame(plan), str(run_dir / SCENARIO_FILE), f"plan-{scenario.name}", "simulation")
            describe_run(
                f"Traffic of the '{scenario.name}' scenario ({scenario.mode}): {scenario.windows} {scenario.window}s x "
                f"{scenario.requests_per_window} requests of {scenario.images_per_request} image(s), seed {scenario.seed}. "
                f"The planned traffic is the run's dataset input; schedule.html shows intended and realised mix."
            )
            state["params_logged"] = True
            state_path.write_text(json.dumps(state))
    bar.update(len(sidecar.done_request_ids()))
    stats = SendStats()
    live = LiveClock.aligned(plan, live_window_s, time.time()) if live_window_s else None
    if live:
        log.info(
            "live: %d windows of %gs from %s (UTC), no window sent with the requests",
            scenario.windows,
            live_window_s,
            datetime.fromtimestamp(live.start, UTC).isoformat(timespec="seconds"),
        )
    try:
        stats = send_plan(plan, pools, transport, sidecar, concurrency, rate, on_progress, live=live)
    finally:
        bar.close()
        delivered = sidecar.done_request_ids()
        sidecar.close()
        if track:
            _log_outcome(scenario, plan, delivered, intended, stats, run_dir)
            mlflow.end_run(status="FINISHED" if len(delivered) == len(plan) else "KILLED")
    return SimulationResult(run_dir, stats, len(plan), run_id)


def plan_frame(plan: list[PlannedRequest]) -> pd.DataFrame:
    """The planned traffic, one row per image: request id, window, source; what the run's dataset input describes."""
    return pd.DataFrame(
        [(request.request_id, request.window, source) for request in plan for source in request.sources],
        columns=["request_id", "window", "source"],
    )


def _log_outcome(scenario: Scenario, plan, delivered: set[str], intended: np.ndarray, stats: SendStats, run_dir: Path) -> None:
    sent = [request for request in plan if request.request_id in delivered]
    if stats.model_versions:
        mlflow.set_tag("model_version", ",".join(sorted(stats.model_versions)))
    mlflow.log_metrics({"requests_delivered": len(sent), "requests_planned": len(plan), "requests_per_s": stats.requests_per_s})
    if sent:
        realised = realised_mix(sent, scenario)
        title = f"{scenario.name}: intended and realised mix ({len(sent)} of {len(plan)} requests delivered)"
        path = write_schedule_html(
            schedule_figure(scenario.source_names, intended, realised, title, scenario.window), run_dir / "schedule.html"
        )
        mlflow.log_artifact(str(path))
    log.info("%s: %d of %d requests delivered", scenario.name, len(sent), len(plan))
