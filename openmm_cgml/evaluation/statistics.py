"""Uncertainty and estimators for the fidelity benchmark, on plain arrays.

Everything here is model-free statistics, tested on synthetic data with known
answers (``tests/evaluation/test_statistics.py``):

* :func:`block_bootstrap_means` and :func:`bootstrap_ci`: resampling. Time
  series are resampled in contiguous blocks (a moving-block bootstrap), so
  that their autocorrelation is kept; statistics across molecules are
  resampled molecule by molecule.
* :func:`integrated_time` and :func:`exponential_time`: the two relaxation
  time estimators of an autocorrelation function.
* :func:`js_floor`: the Jensen-Shannon divergence that two finite samples of
  one distribution show by chance, to read a measured JS against.
* :class:`LinearBaseline`: ordinary least squares on sequence features, the
  composition-only baseline a learned propagator has to beat.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import optimize

__all__ = ["block_bootstrap_means", "bootstrap_ci", "percentile_ci", "integrated_time", "exponential_time",
           "js_floor", "LinearBaseline", "r2_scores", "mean_ci"]

CONFIDENCE = 0.95


def percentile_ci(samples, confidence: float = CONFIDENCE) -> list[float]:
    """The central ``confidence`` interval ``[lo, hi]`` of bootstrap replicates (NaNs ignored)."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - confidence) / 2.0
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]


def block_length(n: int) -> int:
    """Default block length for ``n`` correlated samples: ``n^(1/3)``, the rate-optimal order for the mean."""
    return max(1, int(round(n ** (1.0 / 3.0))))


def block_bootstrap_means(series, n_boot: int = 1000, block: int | None = None, seed: int = 0) -> np.ndarray:
    """Moving-block bootstrap replicates of the mean of a correlated time series, shape ``(n_boot,)``.

    Parameters
    ----------
    series : array_like, shape (n,)
        One observable along one trajectory.
    n_boot : int
        Number of replicates.
    block : int, optional
        Block length in samples. Correlations longer than a block are lost, which
        narrows the interval by about ``tau / block``; the default
        ``max(block_length(n), 10 * integrated time)``, at most ``n / 10``, keeps
        that near 10% while leaving at least 10 blocks.
    seed : int
        Seed of the resampling.
    """
    x = np.asarray(series, dtype=np.float64).ravel()
    n = x.size
    if n < 2:
        raise ValueError(f"block_bootstrap_means needs at least 2 samples, got {n}")
    if block is None:
        tau = integrated_time(_acf(x)) if np.ptp(x) > 0 else 0.0
        block = min(max(block_length(n), int(np.ceil(10.0 * tau))), max(1, n // 10))
    block = int(min(max(block, 1), n))
    rng = np.random.default_rng(seed)
    n_blocks = int(np.ceil(n / block))
    # the mean of each possible block, by cumulative sums; a replicate averages n_blocks random blocks
    cumulative = np.concatenate([[0.0], np.cumsum(x)])
    block_means = (cumulative[block:] - cumulative[:-block]) / block
    starts = rng.integers(0, len(block_means), size=(n_boot, n_blocks))
    return block_means[starts].mean(axis=1)


def mean_ci(series, min_samples: int = 8) -> dict:
    """``{"mean", "ci95"}`` of a correlated series: its mean and the 95% moving-block bootstrap interval
    (:func:`block_bootstrap_means`), None with fewer than ``min_samples`` samples."""
    values = np.asarray(series, dtype=np.float64).ravel()
    interval = percentile_ci(block_bootstrap_means(values, seed=1)) if values.size >= min_samples else None
    return {"mean": float(values.mean()), "ci95": interval}


def bootstrap_ci(units: Sequence, statistic: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0,
                 confidence: float = CONFIDENCE) -> tuple[float, list[float], np.ndarray]:
    """Statistic over units (molecules) and its percentile bootstrap interval over those units.

    Parameters
    ----------
    units : sequence
        One entry per molecule; ``statistic`` receives an integer index array into it.
    statistic : callable
        ``statistic(indices) -> float``; it is called once with ``arange(len(units))``
        for the estimate and ``n_boot`` times with resampled indices.

    Returns
    -------
    estimate, [lo, hi], replicates
    """
    n = len(units)
    if n < 2:
        raise ValueError(f"a bootstrap over units needs at least 2 of them, got {n}")
    rng = np.random.default_rng(seed)
    estimate = float(statistic(np.arange(n)))
    replicates = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    return estimate, percentile_ci(replicates, confidence), replicates


def _acf(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of a 1-D series up to lag n//2 (FFT, unbiased per lag)."""
    from openmm_cgml.evaluation.analysis import autocorrelation

    return autocorrelation(x)


def integrated_time(acf, dt: float = 1.0, window: float = 5.0) -> float:
    """Integrated relaxation time of a normalised ACF, with Sokal's self-consistent window.

    ``tau(M) = trapezoid of C(0..M) * dt``, with ``M`` the first lag where
    ``M >= window * tau(M)``. For ``C(t) = exp(-t / tau)`` this returns ``tau``
    (up to the discretisation, below 1% for ``tau >= 2 dt``). The window
    stops the sum before the noisy tail of the ACF; truncating at the first
    zero crossing instead lets one noise dip shorten tau by a large factor.
    When no lag satisfies the window, the whole ACF is integrated (a lower
    bound: the series is too short).
    """
    c = np.asarray(acf, dtype=np.float64).ravel()
    if c.size < 2 or not np.all(np.isfinite(c)):
        raise ValueError("integrated_time needs a finite ACF with at least 2 lags")
    running = np.concatenate([[0.0], np.cumsum((c[1:] + c[:-1]) / 2.0)])  # trapezoid up to each lag
    lags = np.arange(c.size)
    ok = np.flatnonzero(lags >= window * running)
    ok = ok[ok > 0]
    m = int(ok[0]) if ok.size else c.size - 1
    return float(running[m] * dt)


def exponential_time(acf, dt: float = 1.0, floor: float = np.exp(-1.0)) -> float:
    """Relaxation time from a least-squares fit of ``exp(-t / tau)`` to the ACF above ``floor``.

    The fit covers the lags before the ACF first falls below ``floor``
    (default ``1/e``), so it measures the slowest-dominated initial decay and
    ignores the noisy tail. At least 3 lags are always used.
    """
    c = np.asarray(acf, dtype=np.float64).ravel()
    if c.size < 3 or not np.all(np.isfinite(c)):
        raise ValueError("exponential_time needs a finite ACF with at least 3 lags")
    below = np.flatnonzero(c < floor)
    end = max(int(below[0]) + 1 if below.size else c.size, 3)
    lags = np.arange(end, dtype=np.float64)
    guess = max(float(np.trapezoid(np.clip(c[:end], 0, None))), 0.5)
    (tau,), _ = optimize.curve_fit(lambda t, tau: np.exp(-t / tau), lags, c[:end], p0=[guess],
                                   bounds=(1e-9, np.inf))
    return float(tau * dt)


def js_floor(n_bins: int, n_a: float, n_b: float) -> float:
    """Expected JS divergence (base 2) between histograms of two independent samples of one distribution.

    The leading-order small-sample bias: each histogram of ``n`` independent
    samples over ``K`` occupied bins carries a chi-square-like error, and
    ``E[JS] ~ (K - 1) / (8 ln 2) * (1 / n_a + 1 / n_b)``. For correlated
    samples (trajectories) pass effective sample sizes (``n / (2 tau)``).
    The benchmark's ceiling is measured, reference against reference; this
    is the analytic check of that measurement.
    """
    if n_bins < 1 or n_a <= 0 or n_b <= 0:
        raise ValueError("js_floor needs n_bins >= 1 and positive sample sizes")
    return float((n_bins - 1) / (8.0 * np.log(2.0)) * (1.0 / n_a + 1.0 / n_b))


class LinearBaseline:
    """Ordinary least squares of a per-molecule value on per-molecule features, with an intercept.

    The composition-only baseline: fit on the training molecules (e.g. mean
    Rg against solvophobic fraction and blockiness), then predict unseen ones.
    A propagator that does not beat it has learned nothing beyond composition.

    Parameters
    ----------
    names : sequence of str
        Feature names, for ``__repr__`` and the JSON.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.coefficients: np.ndarray | None = None

    def fit(self, features, values) -> "LinearBaseline":
        """Fit on ``features`` (n, n_features) and ``values`` (n,)."""
        x = self._design(features)
        y = np.asarray(values, dtype=np.float64).ravel()
        if x.shape[0] != y.size or y.size < x.shape[1]:
            raise ValueError(f"LinearBaseline.fit needs at least {x.shape[1]} molecules with one value each, "
                             f"got {x.shape[0]} rows and {y.size} values")
        self.coefficients = np.linalg.lstsq(x, y, rcond=None)[0]
        return self

    def predict(self, features) -> np.ndarray:
        if self.coefficients is None:
            raise RuntimeError("LinearBaseline.predict before fit")
        return self._design(features) @ self.coefficients

    def _design(self, features) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        f = f.reshape(len(f), -1)
        if f.shape[1] != len(self.names):
            raise ValueError(f"expected {len(self.names)} features ({', '.join(self.names)}), got {f.shape[1]}")
        return np.hstack([np.ones((len(f), 1)), f])

    def to_dict(self) -> dict:
        coefficients = [] if self.coefficients is None else self.coefficients.tolist()
        return {"features": self.names, "intercept_and_coefficients": coefficients}

    def __repr__(self) -> str:
        return f"LinearBaseline({self.names})"


def r2_scores(truth, predicted) -> tuple[float, float]:
    """``(R2, r2)``: coefficient of determination ``1 - SS_res/SS_tot`` and squared Pearson correlation."""
    x = np.asarray(truth, dtype=np.float64).ravel()
    y = np.asarray(predicted, dtype=np.float64).ravel()
    ss_tot = float(((x - x.mean()) ** 2).sum())
    if x.size < 2 or ss_tot <= 0:
        return float("nan"), float("nan")
    determination = 1.0 - float(((y - x) ** 2).sum()) / ss_tot
    pearson = float(np.corrcoef(x, y)[0, 1] ** 2) if np.ptp(y) > 0 else float("nan")
    return determination, pearson
