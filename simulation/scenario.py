"""Scenarios as YAML files: windows, requests, seed and per-source weight curves; and the traffic plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from common.datasets import SOURCES
from simulation.curves import CurveError, add_noise, evaluate_curve, normalise, winner_takes_all

BUILTIN_DIR = Path(__file__).parent / "scenarios"
MODES = ("mix", "winner-takes-all")
TOP_KEYS = {"name", "description", "windows", "window", "requests_per_window", "images_per_request", "seed", "mode", "sources"}
SOURCE_KEYS = {"weight", "noise", "data", "layout"}


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    weight: object
    noise: float = 0.0
    data: str | None = None  # a folder in a public layout; None: the dataset cache
    layout: str = "mnist"  # mnist, devanagari or japanese: how `data` is laid out


@dataclass(frozen=True)
class Scenario:
    name: str
    windows: int
    requests_per_window: int
    seed: int
    sources: tuple[SourceSpec, ...]
    window: str = "day"
    images_per_request: int = 1
    mode: str = "mix"
    description: str = ""
    origin: str = "<inline>"

    @property
    def source_names(self) -> list[str]:
        return [source.name for source in self.sources]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "windows": self.windows,
            "window": self.window,
            "requests_per_window": self.requests_per_window,
            "images_per_request": self.images_per_request,
            "seed": self.seed,
            "mode": self.mode,
            "sources": {
                s.name: {
                    k: v
                    for k, v in (("weight", s.weight), ("noise", s.noise), ("data", s.data), ("layout", s.layout))
                    if v is not None
                }
                for s in self.sources
            },
        }


def builtin_names() -> list[str]:
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str, **overrides) -> Scenario:
    """A built-in scenario by name, or the user's YAML file; `overrides` replace top-level fields."""
    path = Path(name_or_path)
    if not path.suffix and (BUILTIN_DIR / f"{name_or_path}.yaml").is_file():
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ScenarioError(f"{name_or_path}: no such scenario file or built-in (built-ins: {', '.join(builtin_names())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScenarioError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping of scenario fields at the top level")
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return parse_scenario(raw, str(path))


def parse_scenario(raw: dict, origin: str = "<inline>") -> Scenario:
    """Validate a scenario mapping; every error names `origin` and the field."""

    def fail(message: str) -> ScenarioError:
        return ScenarioError(f"{origin}: {message}")

    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(TOP_KEYS))}")
    for key in ("windows", "requests_per_window"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise fail(f"'{key}' must be a whole number above zero; got {value!r}")
    images_per_request = raw.get("images_per_request", 1)
    if isinstance(images_per_request, bool) or not isinstance(images_per_request, int) or images_per_request <= 0:
        raise fail(f"'images_per_request' must be a whole number above zero; got {images_per_request!r}")
    mode = raw.get("mode", "mix")
    if mode not in MODES:
        raise fail(f"'mode' must be one of {', '.join(MODES)}; got {mode!r}")
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, dict) or not sources_raw:
        raise fail("'sources' must map source names to {weight: ..., noise: ...}")
    sources = []
    for name, spec in sources_raw.items():
        if not isinstance(spec, dict):
            raise fail(f"sources.{name}: expected a mapping with 'weight'")
        extra = sorted(set(spec) - SOURCE_KEYS)
        if extra:
            raise fail(f"sources.{name}: unknown field(s) {', '.join(extra)}; expected {', '.join(sorted(SOURCE_KEYS))}")
        if "weight" not in spec:
            raise fail(f"sources.{name}: missing 'weight'")
        if name not in SOURCES and "data" not in spec:
            raise fail(f"sources.{name}: unknown source; use one of {', '.join(SOURCES)} or give 'data' (a folder) and 'layout'")
        layout = spec.get("layout", name if name in SOURCES else None)
        if layout not in SOURCES:
            raise fail(f"sources.{name}.layout: expected one of {', '.join(SOURCES)}; got {layout!r}")
        noise = spec.get("noise", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
            raise fail(f"sources.{name}.noise: expected a standard deviation >= 0; got {noise!r}")
        data = spec.get("data")
        if data and not Path(data).expanduser().is_absolute() and Path(origin).is_file():
            data = str((Path(origin).parent / Path(data)).resolve())  # relative to the scenario file
        sources.append(SourceSpec(str(name), spec["weight"], float(noise), data, layout))
    scenario = Scenario(
        name=str(raw.get("name", Path(origin).stem)),
        windows=raw["windows"],
        requests_per_window=raw["requests_per_window"],
        seed=int(raw.get("seed", 0)),
        sources=tuple(sources),
        window=str(raw.get("window", "day")),
        images_per_request=images_per_request,
        mode=mode,
        description=str(raw.get("description", "")),
        origin=origin,
    )
    try:
        weights = raw_weights(scenario, np.random.default_rng(0))
        if (weights < 0).any():
            source = scenario.sources[int(np.argwhere(weights < 0)[0][1])].name
            raise fail(f"sources.{source}.weight: negative weights (a source cannot send fewer than zero images)")
        normalise(weights)
    except CurveError as err:
        raise fail(str(err)) from None
    return scenario


def raw_weights(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    """(windows, sources) weights: each source's curve plus its noise."""
    columns = []
    for source in scenario.sources:
        curve = evaluate_curve(source.weight, scenario.windows, f"sources.{source.name}.weight")
        columns.append(add_noise(curve, source.noise, rng))
    return np.stack(columns, axis=1)


def intended_mix(scenario: Scenario) -> np.ndarray:
    """(windows, sources) shares each window should have, from the seed: normalised or winner-takes-all."""
    weights = raw_weights(scenario, np.random.default_rng([scenario.seed, 0]))
    return winner_takes_all(weights) if scenario.mode == "winner-takes-all" else normalise(weights)


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the plan: its id, window, and per image the source and the index into its pool."""

    request_id: str
    window: int
    sources: tuple[str, ...]
    pool_indices: tuple[int, ...] = field(default=())


def plan_traffic(scenario: Scenario, pool_sizes: dict[str, int]) -> list[PlannedRequest]:
    """The whole run's requests, the same for the same seed: sources drawn from each window's mix,
    images drawn from each pool without replacement (reshuffled only once a pool is exhausted)."""
    mix = intended_mix(scenario)
    rng = np.random.default_rng([scenario.seed, 1])
    names = scenario.source_names
    orders = {name: _PoolOrder(pool_sizes[name], _stable_seed(scenario.seed, name)) for name in names}
    prefix = f"{scenario.name}-s{scenario.seed}"
    plan = []
    for window in range(scenario.windows):
        count = scenario.requests_per_window * scenario.images_per_request
        drawn = rng.choice(len(names), size=count, p=mix[window])
        for request in range(scenario.requests_per_window):
            chosen = drawn[request * scenario.images_per_request : (request + 1) * scenario.images_per_request]
            sources = tuple(names[index] for index in chosen)
            plan.append(
                PlannedRequest(f"{prefix}-w{window}-r{request}", window, sources, tuple(orders[name].next() for name in sources))
            )
    return plan


class _PoolOrder:
    """Indices 0..size-1 in a seeded random order, reshuffled when used up."""

    def __init__(self, size: int, seed: int) -> None:
        if size <= 0:
            raise ScenarioError("an image pool is empty")
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.order: list[int] = []
        self.epochs = 0

    def next(self) -> int:
        if not self.order:
            self.order = self.rng.permutation(self.size).tolist()[::-1]
            self.epochs += 1
        return self.order.pop()


def _stable_seed(seed: int, name: str) -> list[int]:
    return [seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")]


def realised_mix(plan: list[PlannedRequest], scenario: Scenario) -> np.ndarray:
    """(windows, sources) shares actually drawn in the plan."""
    names = scenario.source_names
    counts = np.zeros((scenario.windows, len(names)))
    for request in plan:
        for source in request.sources:
            counts[request.window, names.index(source)] += 1
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
