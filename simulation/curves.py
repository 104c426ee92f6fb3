"""Weight curves over windows, built from named shapes; pure functions of (spec, number of windows)."""

from __future__ import annotations

import numpy as np

# The original mlops-demo's Devanagari growth: -x^2 + 1.68x - 0.5 for x from 0 to 1.
ORIGINAL_QUADRATIC = {"a": -1.0, "b": 1.68, "c": -0.5}


class CurveError(ValueError):
    """A curve spec that names an unknown shape or holds a bad value; the message names the field."""


def constant(windows: int, value: float) -> np.ndarray:
    return np.full(windows, float(value))


def seasonal(windows: int, bumps: list[list[float]], height: float = 1.0) -> np.ndarray:
    """Half-sine bumps of `height` over each [start, end] window range, zero elsewhere."""
    t = np.arange(windows, dtype=float)
    curve = np.zeros(windows)
    for start, end in bumps:
        inside = (t >= start) & (t <= end)
        curve[inside] += height * np.sin(np.pi * (t[inside] - start) / (end - start))
    return curve


def quadratic(windows: int, a: float, b: float, c: float) -> np.ndarray:
    """a*x^2 + b*x + c for x from 0 (first window) to 1 (last), never below zero."""
    x = np.linspace(0.0, 1.0, windows)
    return np.clip(a * x**2 + b * x + c, 0.0, None)


def ramp(windows: int, start: float, end: float, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """`low` until window `start`, linear to `high` at window `end`, `high` after."""
    t = np.arange(windows, dtype=float)
    return np.interp(t, [start, end], [low, high])


def step(windows: int, at: float, before: float = 0.0, after: float = 1.0) -> np.ndarray:
    """`before` until window `at`, `after` from it on."""
    return np.where(np.arange(windows) >= at, float(after), float(before))


SHAPES = {"constant", "seasonal", "quadratic", "ramp", "step", "sum"}


def evaluate_curve(spec: object, windows: int, field: str = "weight") -> np.ndarray:
    """A curve spec ({shape: parameters}) evaluated over `windows` windows."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return constant(windows, spec)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise CurveError(f"{field}: expected one shape as {{shape: parameters}} with a shape of {', '.join(sorted(SHAPES))}")
    ((shape, params),) = spec.items()
    try:
        if shape == "constant":
            return constant(windows, _number(params, f"{field}.constant"))
        if shape == "seasonal":
            bumps = params.get("bumps") if isinstance(params, dict) else None
            if not bumps or not all(isinstance(b, list) and len(b) == 2 and b[0] < b[1] for b in bumps):
                raise CurveError(f"{field}.seasonal.bumps: expected a list of [start, end] window pairs with start < end")
            return seasonal(windows, bumps, float(params.get("height", 1.0)))
        if shape == "quadratic":
            coefficients = {**ORIGINAL_QUADRATIC, **(params or {})}
            return quadratic(windows, *(float(coefficients[key]) for key in ("a", "b", "c")))
        if shape == "ramp":
            if params.get("end", 0) <= params.get("start", 0):
                raise CurveError(f"{field}.ramp: 'end' must come after 'start'")
            return ramp(
                windows,
                float(params["start"]),
                float(params["end"]),
                float(params.get("from", 0.0)),
                float(params.get("to", 1.0)),
            )
        if shape == "step":
            return step(windows, float(params["at"]), float(params.get("before", 0.0)), float(params.get("after", 1.0)))
        if shape == "sum":
            if not isinstance(params, list) or not params:
                raise CurveError(f"{field}.sum: expected a list of shapes")
            return sum(evaluate_curve(part, windows, f"{field}.sum[{index}]") for index, part in enumerate(params))
    except (KeyError, TypeError, AttributeError) as err:
        raise CurveError(f"{field}.{shape}: missing or malformed parameter ({err})") from None
    raise CurveError(f"{field}: unknown shape {shape!r}; expected one of {', '.join(sorted(SHAPES))}")


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CurveError(f"{field}: expected a number, got {value!r}")
    return float(value)


def add_noise(curve: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of standard deviation `sd`, where the curve is not zero, never below zero."""
    if sd <= 0:
        return curve
    noisy = curve + rng.normal(0.0, sd, len(curve)) * (curve > 0)
    return np.clip(noisy, 0.0, None)


def normalise(weights: np.ndarray) -> np.ndarray:
    """Rows of (windows, sources) weights scaled to sum to 1; a row summing to zero is an error."""
    totals = weights.sum(axis=1)
    empty = np.flatnonzero(totals <= 0)
    if len(empty):
        raise CurveError(f"every source weighs zero in window {int(empty[0])} (and {len(empty) - 1} more): nothing to send")
    return weights / totals[:, None]


def winner_takes_all(weights: np.ndarray) -> np.ndarray:
    """The original demo's rule: each window's traffic comes wholly from the heaviest source."""
    mix = np.zeros_like(weights)
    mix[np.arange(len(weights)), weights.argmax(axis=1)] = 1.0
    return mix
