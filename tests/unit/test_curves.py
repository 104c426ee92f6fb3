"""Every curve shape, noise, normalisation and winner-takes-all."""

import numpy as np
import pytest

from simulation.curves import CurveError, add_noise, evaluate_curve, normalise, winner_takes_all


def test_constant():
    assert (evaluate_curve({"constant": 0.1}, 5) == 0.1).all()
    assert (evaluate_curve(0.3, 4) == 0.3).all()


def test_seasonal_bumps_are_half_sines_zero_elsewhere():
    curve = evaluate_curve({"seasonal": {"bumps": [[20, 40], [60, 80]], "height": 2.0}}, 100)
    assert curve[30] == pytest.approx(2.0) and curve[70] == pytest.approx(2.0)
    assert curve[25] == pytest.approx(2.0 * np.sin(np.pi * 5 / 20))
    assert (curve[:20] == 0).all() and (curve[41:60] == 0).all() and (curve[81:] == 0).all()


def test_the_original_quadratic_growth_clipped_at_zero():
    curve = evaluate_curve({"quadratic": {}}, 101)
    x = np.linspace(0, 1, 101)
    expected = np.clip(-(x**2) + 1.68 * x - 0.5, 0, None)
    assert np.allclose(curve, expected)
    assert curve[0] == 0 and curve.max() == pytest.approx(0.84 * 1.68 - 0.84**2 - 0.5, abs=1e-3)


def test_ramp_is_flat_then_linear_then_flat():
    curve = evaluate_curve({"ramp": {"start": 10, "end": 20, "from": 0.0, "to": 1.0}}, 30)
    assert (curve[:11] == 0).all() and curve[15] == pytest.approx(0.5) and (curve[20:] == 1).all()


def test_step_switches_at_its_window():
    curve = evaluate_curve({"step": {"at": 5, "before": 0.1, "after": 0.7}}, 10)
    assert (curve[:5] == 0.1).all() and (curve[5:] == 0.7).all()


def test_sum_adds_shapes():
    curve = evaluate_curve({"sum": [{"constant": 0.2}, {"step": {"at": 3}}]}, 6)
    assert list(curve) == pytest.approx([0.2, 0.2, 0.2, 1.2, 1.2, 1.2])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"wobble": {}}, "unknown shape 'wobble'"),
        ({"constant": "high"}, "expected a number"),
        ({"seasonal": {"bumps": [[40, 20]]}}, "start < end"),
        ({"ramp": {"start": 5, "end": 5}}, "'end' must come after 'start'"),
        ({"step": {}}, "missing or malformed parameter"),
        ({"sum": []}, "expected a list of shapes"),
        ({"constant": 1, "step": {"at": 1}}, "expected one shape"),
    ],
)
def test_bad_curve_specs_name_the_field(spec, message):
    with pytest.raises(CurveError, match=message):
        evaluate_curve(spec, 10, "sources.x.weight")


def test_noise_is_seeded_non_negative_and_keeps_zeros():
    curve = np.array([0.0, 0.1, 0.1, 0.0, 0.1] * 20)
    one = add_noise(curve, 0.5, np.random.default_rng(3))
    assert np.array_equal(one, add_noise(curve, 0.5, np.random.default_rng(3)))
    assert (one >= 0).all() and (one[curve == 0] == 0).all() and not np.array_equal(one, curve)


def test_normalise_makes_shares_and_refuses_an_empty_window():
    shares = normalise(np.array([[1.0, 3.0], [2.0, 0.0]]))
    assert np.allclose(shares, [[0.25, 0.75], [1.0, 0.0]])
    with pytest.raises(CurveError, match="every source weighs zero in window 1"):
        normalise(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_winner_takes_all_gives_each_window_to_the_heaviest_source():
    mix = winner_takes_all(np.array([[0.1, 0.5, 0.2], [0.3, 0.0, 0.2]]))
    assert mix.tolist() == [[0, 1, 0], [1, 0, 0]]
