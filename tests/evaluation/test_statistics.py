"""Statistics of the fidelity benchmark on synthetic data with known answers."""
import numpy as np
import pytest
from scipy.signal import lfilter

from openmm_cgml.evaluation.analysis import autocorrelation, js_divergence_samples
from openmm_cgml.evaluation.statistics import (
    LinearBaseline,
    block_bootstrap_means,
    bootstrap_ci,
    exponential_time,
    integrated_time,
    js_floor,
    percentile_ci,
    r2_scores,
)


def ar1(n, tau, rng, mean=0.0):
    """AR(1) series with ACF exp(-lag / tau) and unit variance."""
    phi = np.exp(-1.0 / tau)
    kicks = rng.normal(size=n)
    kicks[0] /= np.sqrt(1 - phi ** 2)  # start in equilibrium
    return lfilter([np.sqrt(1 - phi ** 2)], [1.0, -phi], kicks) + mean


@pytest.mark.parametrize("tau", [5.0, 20.0])
def test_both_tau_estimators_recover_ar1_tau_within_10_percent(tau):
    rng = np.random.default_rng(1)
    series = ar1(400_000, tau, rng)
    acf = autocorrelation(series, max_lag=int(20 * tau))
    assert integrated_time(acf) == pytest.approx(tau, rel=0.10)
    assert exponential_time(acf) == pytest.approx(tau, rel=0.10)
    # the frame spacing scales the answer
    assert integrated_time(acf, dt=2.0) == pytest.approx(2 * integrated_time(acf))


def test_integrated_time_of_exact_exponential():
    lags = np.arange(2000)
    assert integrated_time(np.exp(-lags / 12.0)) == pytest.approx(12.0, rel=0.01)
    assert exponential_time(np.exp(-lags / 12.0)) == pytest.approx(12.0, rel=1e-3)


def test_block_bootstrap_interval_covers_the_true_mean_95_percent_of_repeats():
    rng = np.random.default_rng(2)
    covered = 0
    repeats = 200
    for repeat in range(repeats):
        series = ar1(4000, 10.0, rng, mean=3.0)
        lo, hi = percentile_ci(block_bootstrap_means(series, n_boot=400, seed=repeat))
        covered += lo <= 3.0 <= hi
    # a naive iid bootstrap of this series covers only ~30%; a correct one 95% (binomial sd 1.5%)
    assert 0.88 <= covered / repeats <= 0.99


def test_bootstrap_over_units_covers_the_true_mean_95_percent_of_repeats():
    rng = np.random.default_rng(3)
    covered = 0
    repeats = 300
    for repeat in range(repeats):
        units = rng.normal(1.0, 2.0, size=40)
        _, (lo, hi), _ = bootstrap_ci(units, lambda i: units[i].mean(), n_boot=400, seed=repeat)
        covered += lo <= 1.0 <= hi
    assert 0.90 <= covered / repeats <= 0.985


def test_js_of_two_samples_of_one_distribution_is_near_zero_and_matches_the_floor():
    rng = np.random.default_rng(4)
    bins = 50
    for n in (2_000, 20_000):
        measured = np.mean([js_divergence_samples(rng.normal(size=n), rng.normal(size=n), n_bins=bins)
                            for _ in range(30)])
        # about 40 of the 50 bins (plus overflow) hold the mass of a normal sample over its range
        assert measured < 0.02
        assert measured == pytest.approx(js_floor(40, n, n), rel=0.4)
    # a real difference stands far above the floor
    shifted = js_divergence_samples(rng.normal(size=20_000), rng.normal(0.5, 1.0, size=20_000), n_bins=bins)
    assert shifted > 20 * js_floor(40, 20_000, 20_000)


def test_composition_baseline_recovers_a_planted_linear_law():
    rng = np.random.default_rng(5)
    features = rng.uniform(0, 1, size=(30, 3))
    truth = 0.7 - 0.3 * features[:, 0] + 0.1 * features[:, 1] + 0.25 * features[:, 2]
    baseline = LinearBaseline(["a", "b", "c"]).fit(features, truth + rng.normal(0, 1e-3, size=30))
    assert baseline.coefficients == pytest.approx([0.7, -0.3, 0.1, 0.25], abs=5e-3)
    unseen = rng.uniform(0, 1, size=(10, 3))
    expected = 0.7 - 0.3 * unseen[:, 0] + 0.1 * unseen[:, 1] + 0.25 * unseen[:, 2]
    assert baseline.predict(unseen) == pytest.approx(expected, abs=5e-3)
    R2, r2 = r2_scores(expected, baseline.predict(unseen))
    assert R2 > 0.99 and r2 > 0.99


def test_baseline_refuses_too_few_molecules():
    with pytest.raises(ValueError, match="at least 3"):
        LinearBaseline(["a", "b"]).fit(np.zeros((2, 2)), [1.0, 2.0])


def test_r2_scores_tell_bias_from_correlation():
    truth = np.linspace(1, 2, 10)
    R2, r2 = r2_scores(truth, truth * 1.5)
    assert r2 == pytest.approx(1.0)
    assert R2 < 0.0
