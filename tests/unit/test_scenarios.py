"""Scenario files: built-ins, validation messages, and the traffic plan's determinism and mix."""

import numpy as np
import pytest
import yaml

from simulation.scenario import (
    ScenarioError,
    builtin_names,
    intended_mix,
    load_scenario,
    parse_scenario,
    plan_traffic,
    realised_mix,
)


def test_the_required_builtins_exist_and_load():
    assert {"stable", "seasonal-japanese", "gradual-devanagari", "sudden-devanagari", "mlops-demo"} <= set(builtin_names())
    for name in builtin_names():
        mix = intended_mix(load_scenario(name))
        assert np.allclose(mix.sum(axis=1), 1)


def test_mlops_demo_reproduces_the_original_one_source_per_window():
    scenario = load_scenario("mlops-demo")
    mix = intended_mix(scenario)
    assert set(np.unique(mix)) == {0.0, 1.0}
    winners = [scenario.source_names[index] for index in mix.argmax(axis=1)]
    assert winners[30] == "japanese" and winners[70] == "japanese" and winners[5] == "mnist"
    assert winners[90] == "devanagari"  # the quadratic (0.2 at its peak) outweighs MNIST's 0.1 late on


def write(tmp_path, content):
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


BASE = {"windows": 10, "requests_per_window": 5, "seed": 1, "sources": {"mnist": {"weight": {"constant": 1}}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sources": {"klingon": {"weight": 1}}}, "sources.klingon: unknown source"),
        ({"sources": {"mnist": {"weight": {"zigzag": {}}}}}, "sources.mnist.weight: unknown shape 'zigzag'"),
        ({"windows": 0}, "windows: input should be greater than 0; got 0"),
        ({"windows": 2.5}, "windows: input should be a valid integer; got 2.5"),
        ({"seed": True}, "seed: input should be a valid integer; got True"),
        ({"requests_per_window": -5}, "requests_per_window: input should be greater than 0; got -5"),
        ({"sources": {"mnist": {"weight": {"constant": -1}}}}, "sources.mnist.weight: negative weights"),
        ({"sources": {"mnist": {"weight": {"step": {"at": 5}}}}}, "every source weighs zero in window 0"),
        ({"mode": "lottery"}, "mode: input should be 'mix' or 'winner-takes-all'; got 'lottery'"),
        ({"colour": "red"}, "colour: unknown field; expected one of name, description, windows"),
        ({"sources": {"mnist": {"weight": 1, "shade": 2}}}, "sources.mnist.shade: unknown field; expected one of weight"),
        ({"sources": {"mnist": {"noise": 0.1}}}, "sources.mnist.weight: missing"),
        ({"sources": {}}, "sources: dictionary should have at least 1 item"),
        ({"sources": {"mnist": {"weight": 1, "layout": "klingon"}}}, "sources.mnist.layout: input should be 'mnist'"),
        ({"sources": {"mnist": {"weight": 1, "noise": -0.1}}}, "sources.mnist.noise: input should be greater than or equal to 0"),
    ],
)
def test_bad_scenarios_name_the_file_and_field(tmp_path, change, message):
    path = write(tmp_path, {**BASE, **change})
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    assert str(raised.value).startswith(path) and message in str(raised.value)


def test_unknown_scenario_lists_the_builtins():
    with pytest.raises(ScenarioError, match="built-ins: closed-loop, gradual-devanagari"):
        load_scenario("no-such-scenario")


def test_overrides_replace_top_level_fields():
    scenario = load_scenario("stable", windows=3, requests_per_window=2)
    assert scenario.windows == 3 and scenario.requests_per_window == 2


def test_the_same_seed_gives_the_same_traffic_and_another_seed_does_not():
    scenario = load_scenario("seasonal-japanese", windows=30, requests_per_window=20)
    sizes = {"mnist": 10000, "japanese": 10800}
    assert plan_traffic(scenario, sizes) == plan_traffic(scenario, sizes)
    other = load_scenario("seasonal-japanese", windows=30, requests_per_window=20, seed=99)
    assert plan_traffic(other, sizes) != plan_traffic(scenario, sizes)


def test_request_ids_are_unique_and_images_are_drawn_without_replacement():
    scenario = parse_scenario({**BASE, "windows": 4, "requests_per_window": 25, "images_per_request": 2})
    plan = plan_traffic(scenario, {"mnist": 200})
    assert len({request.request_id for request in plan}) == 100
    drawn = [index for request in plan for index in request.pool_indices]
    assert len(drawn) == 200 and sorted(drawn) == list(range(200))


def test_realised_mix_over_a_long_run_is_within_tolerance_of_the_intended():
    scenario = load_scenario("gradual-devanagari")  # 100 windows x 200 requests
    plan = plan_traffic(scenario, {"mnist": 10000, "devanagari": 2400})
    intended, realised = intended_mix(scenario), realised_mix(plan, scenario)
    # per window: binomial noise of 200 draws stays within 0.12 of the intended share
    assert np.abs(realised - intended).max() < 0.12
    # over the whole run the shares agree within half a point
    assert np.abs(realised.mean(axis=0) - intended.mean(axis=0)).max() < 0.005


def test_relative_data_folders_are_relative_to_the_scenario_file(tmp_path):
    (tmp_path / "mine").mkdir()
    path = write(
        tmp_path, {**BASE, "sources": {"mnist": {"weight": 1}, "mine": {"weight": 1, "data": "mine", "layout": "japanese"}}}
    )
    source = load_scenario(path).sources[1]
    assert source.data == str(tmp_path / "mine") and source.layout == "japanese"


def test_a_live_run_starts_on_a_window_boundary_and_spreads_each_windows_requests_across_it():
    from simulation.client import LiveClock
    from simulation.scenario import PlannedRequest

    plan = [PlannedRequest(f"w{window}-r{index}", window, ("mnist",)) for window in range(3) for index in range(4)]
    clock = LiveClock.aligned(plan, 20, now=1_000_007.5)
    assert clock.start == 1_000_020  # the next multiple of 20 s: scenario windows are the monitor's windows
    times = [clock.send_time(request) for request in plan]
    assert times[:4] == [1_000_020, 1_000_025, 1_000_030, 1_000_035]
    assert times[4] == clock.window_start(1) == 1_000_040 and max(times) < clock.window_start(3)
