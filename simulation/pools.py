"""Image pools per source, read through common's loaders; never MNIST's train split (the model saw it)."""

from __future__ import annotations

from pathlib import Path

from common.datasets import FOREIGN_LAYOUTS, DatasetError, Digits, load_mnist, load_png_digits
from simulation.scenario import Scenario, ScenarioError, SourceSpec


def load_pool(source: SourceSpec, data_dir: str | Path, origin: str) -> Digits:
    """The digits a source draws from: its own folder when the scenario gives one, else the cache."""
    folder = Path(source.data).expanduser() if source.data else Path(data_dir) / source.layout
    if not folder.is_dir():
        raise ScenarioError(f"{origin}: sources.{source.name}: dataset folder {folder} not found")
    try:
        if source.layout == "mnist":
            digits = load_mnist(folder, "test")
        else:
            digits = load_png_digits(folder, FOREIGN_LAYOUTS[source.layout])
    except DatasetError as err:
        raise ScenarioError(f"{origin}: sources.{source.name}: {err}") from None
    return Digits(digits.images, digits.labels, source.name)


def load_pools(scenario: Scenario, data_dir: str | Path) -> dict[str, Digits]:
    return {source.name: load_pool(source, data_dir, scenario.origin) for source in scenario.sources}
