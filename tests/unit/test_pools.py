"""Image pools: read through common's loaders from the cache or a user's folder; errors name the folder."""

import pytest

from simulation.pools import load_pools
from simulation.scenario import ScenarioError, parse_scenario
from tests.helpers import write_mnist, write_png_classes


def test_pools_come_from_mnist_test_and_a_users_folder(tmp_path):
    write_mnist(tmp_path / "cache" / "mnist", count=7)
    write_png_classes(tmp_path / "mine", "{:02d}", side=28, per_class=2)
    scenario = parse_scenario(
        {
            "windows": 2,
            "requests_per_window": 1,
            "sources": {"mnist": {"weight": 1}, "mine": {"weight": 1, "data": str(tmp_path / "mine"), "layout": "japanese"}},
        }
    )
    pools = load_pools(scenario, tmp_path / "cache")
    assert len(pools["mnist"]) == 7 and len(pools["mine"]) == 20 and pools["mine"].source == "mine"


def test_a_missing_dataset_folder_is_named(tmp_path):
    scenario = parse_scenario({"windows": 2, "requests_per_window": 1, "sources": {"devanagari": {"weight": 1}}}, "s.yaml")
    with pytest.raises(ScenarioError, match=r"s.yaml: sources.devanagari: dataset folder .*devanagari not found"):
        load_pools(scenario, tmp_path)
