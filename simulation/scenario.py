"""Scenarios as YAML files: windows, requests, seed and per-source weight curves; and the traffic plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from common.datasets import SOURCES
from common.quality import CORRUPTIONS, DUPLICATE_CAUSE
from simulation.curves import CurveError, add_noise, evaluate_curve, normalise, winner_takes_all

BUILTIN_DIR = Path(__file__).parent / "scenarios"
MODES = ("mix", "winner-takes-all")


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
class CorruptionSpec:
    """A pipeline fault applied to a share of every window's images (`rate`: a curve of shares in 0..1)."""

    name: str
    rate: object


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
    corruptions: tuple[CorruptionSpec, ...] = ()

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
            **({"corruptions": {c.name: {"rate": c.rate} for c in self.corruptions}} if self.corruptions else {}),
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


class SourceFields(BaseModel):
    """One traffic source of a scenario file, as written."""

    model_config = ConfigDict(extra="forbid", strict=True)
    weight: Any
    noise: float = Field(0.0, ge=0, description="standard deviation of the noise added to the weight curve")
    data: str | None = None  # a folder in a public layout; None: the dataset cache
    layout: Literal[SOURCES] | None = None  # type: ignore[valid-type]


class CorruptionFields(BaseModel):
    """One pipeline fault of a scenario file: the share of each window's images it corrupts, as a curve."""

    model_config = ConfigDict(extra="forbid", strict=True)
    rate: Any


class ScenarioFields(BaseModel):
    """A scenario file's top-level fields, as written."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = None
    description: str = ""
    windows: PositiveInt
    window: str = "day"
    requests_per_window: PositiveInt
    images_per_request: PositiveInt = 1
    seed: int = 0
    mode: Literal[MODES] = "mix"  # type: ignore[valid-type]
    sources: dict[str, SourceFields] = Field(min_length=1)
    corruptions: dict[Literal[CORRUPTIONS], CorruptionFields] = {}  # type: ignore[valid-type]


def _first_problem(error: ValidationError) -> str:
    """Pydantic's first complaint as `field.path: what was expected; got <value>`."""
    problems = error.errors()
    # a misspelt field explains the missing one it was meant to be: name it first
    problem = next((each for each in problems if each["type"] == "extra_forbidden"), problems[0])
    where = ".".join(str(part) for part in problem["loc"] if part != "[key]")
    if problem["type"] == "extra_forbidden":
        parent = problem["loc"][:-1]
        expected = (
            (CorruptionFields if parent[:1] == ("corruptions",) else SourceFields).model_fields
            if parent
            else ScenarioFields.model_fields
        )
        return f"{where}: unknown field; expected one of {', '.join(expected)}"
    if problem["type"] == "missing":
        return f"{where}: missing"
    return f"{where}: {problem['msg'][0].lower()}{problem['msg'][1:]}; got {problem['input']!r}"


def parse_scenario(raw: dict, origin: str = "<inline>") -> Scenario:
    """Validate a scenario mapping (pydantic checks the fields); every error names `origin` and the field."""

    def fail(message: str) -> ScenarioError:
        return ScenarioError(f"{origin}: {message}")

    try:
        fields = ScenarioFields.model_validate(raw)
    except ValidationError as err:
        raise fail(_first_problem(err)) from None
    sources = []
    for name, spec in fields.sources.items():
        if name not in SOURCES and spec.data is None:
            raise fail(f"sources.{name}: unknown source; use one of {', '.join(SOURCES)} or give 'data' (a folder) and 'layout'")
        layout = spec.layout or (name if name in SOURCES else None)
        if layout is None:
            raise fail(f"sources.{name}.layout: expected one of {', '.join(SOURCES)} for a folder of digits")
        data = spec.data
        if data and not Path(data).expanduser().is_absolute() and Path(origin).is_file():
            data = str((Path(origin).parent / Path(data)).resolve())  # relative to the scenario file
        sources.append(SourceSpec(name, spec.weight, float(spec.noise), data, layout))
    scenario = Scenario(
        name=fields.name or Path(origin).stem,
        windows=fields.windows,
        requests_per_window=fields.requests_per_window,
        seed=fields.seed,
        sources=tuple(sources),
        window=fields.window,
        images_per_request=fields.images_per_request,
        mode=fields.mode,
        description=fields.description,
        origin=origin,
        corruptions=tuple(CorruptionSpec(name, spec.rate) for name, spec in fields.corruptions.items()),
    )
    try:
        weights = raw_weights(scenario, np.random.default_rng(0))
        if (weights < 0).any():
            source = scenario.sources[int(np.argwhere(weights < 0)[0][1])].name
            raise fail(f"sources.{source}.weight: negative weights (a source cannot send fewer than zero images)")
        normalise(weights)
        rates = corruption_rates(scenario)
        if len(rates) and ((rates < 0).any() or (rates.sum(axis=1) > 1).any()):
            raise fail("corruptions: each rate must lie in 0..1 and together at most 1 in every window")
    except CurveError as err:
        raise fail(str(err)) from None
    return scenario


def corruption_rates(scenario: Scenario) -> np.ndarray:
    """(windows, corruptions) share of each window's images each corruption takes; (windows, 0) when none."""
    columns = [evaluate_curve(c.rate, scenario.windows, f"corruptions.{c.name}.rate") for c in scenario.corruptions]
    return np.stack(columns, axis=1) if columns else np.zeros((scenario.windows, 0))


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
    corruptions: tuple[str, ...] = ()  # per image, the pipeline fault applied to it ('' none); empty: none at all


def plan_traffic(scenario: Scenario, pool_sizes: dict[str, int]) -> list[PlannedRequest]:
    """The whole run's requests, the same for the same seed: sources drawn from each window's mix,
    images drawn from each pool without replacement (reshuffled only once a pool is exhausted), and corruptions
    drawn from their rates on a stream of their own (a scenario without any plans as it always did). A duplicate
    burst sends one image of the first source, the same all window."""
    mix = intended_mix(scenario)
    rng = np.random.default_rng([scenario.seed, 1])
    names = scenario.source_names
    orders = {name: _PoolOrder(pool_sizes[name], _stable_seed(scenario.seed, name)) for name in names}
    prefix = f"{scenario.name}-s{scenario.seed}"
    rates = corruption_rates(scenario)
    faults = np.random.default_rng([scenario.seed, 2])
    kinds = ["", *(c.name for c in scenario.corruptions)]
    plan = []
    for window in range(scenario.windows):
        count = scenario.requests_per_window * scenario.images_per_request
        drawn = rng.choice(len(names), size=count, p=mix[window])
        corrupted = faults.choice(len(kinds), size=count, p=[1 - rates[window].sum(), *rates[window]]) if kinds[1:] else None
        burst = int(faults.integers(pool_sizes[names[0]])) if kinds[1:] else 0
        for request in range(scenario.requests_per_window):
            span = slice(request * scenario.images_per_request, (request + 1) * scenario.images_per_request)
            sources = tuple(names[index] for index in drawn[span])
            indices = tuple(orders[name].next() for name in sources)
            faults_here = () if corrupted is None else tuple(kinds[index] for index in corrupted[span])
            if DUPLICATE_CAUSE in faults_here:
                sources = tuple(names[0] if f == DUPLICATE_CAUSE else s for s, f in zip(sources, faults_here))
                indices = tuple(burst if f == DUPLICATE_CAUSE else i for i, f in zip(indices, faults_here))
            plan.append(PlannedRequest(f"{prefix}-w{window}-r{request}", window, sources, indices, faults_here))
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
