"""Dynamical observables of bead chains: Rg^2 relaxation, Rouse modes, centre-of-mass diffusion.

Positions are arrays ``(n_frames, n_beads, 3)`` in nm of one whole molecule,
frames ``dt`` ps apart. Relaxation times come from
:mod:`openmm_cgml.evaluation.statistics` (integrated ACF with Sokal's window,
and a single-exponential fit), in ps.
"""
from __future__ import annotations

import numpy as np

from openmm_cgml.evaluation.analysis import autocorrelation, radius_of_gyration
from openmm_cgml.evaluation.statistics import exponential_time, integrated_time

__all__ = ["rg2_relaxation", "rouse_modes", "rouse_times", "com_diffusion"]


def rg2_relaxation(positions, masses, dt: float) -> dict:
    """Relaxation times (ps) of the squared radius of gyration: ``{"integrated", "exponential"}``."""
    rg2 = radius_of_gyration(positions, masses) ** 2
    acf = autocorrelation(rg2)
    return {"integrated": integrated_time(acf, dt), "exponential": exponential_time(acf, dt)}


def rouse_modes(positions, modes=(1, 2, 3)) -> np.ndarray:
    """Rouse mode amplitudes ``X_p(t) = (1/N) sum_n r_n(t) cos(p pi (n - 1/2) / N)``, shape (F, P, 3).

    The beads are taken in chain order (the order of the bead index along the
    chain, as both METIS-on-a-chain and the builders number them).
    """
    xyz = np.asarray(positions, dtype=np.float64)
    n = xyz.shape[1]
    index = np.arange(1, n + 1) - 0.5
    basis = np.cos(np.outer(np.asarray(modes, dtype=np.float64), index) * np.pi / n) / n  # (P, N)
    return np.einsum("pn,fnx->fpx", basis, xyz)


def rouse_times(positions, dt: float, modes=(1, 2, 3)) -> np.ndarray:
    """Integrated relaxation time (ps) of each Rouse mode's vector autocorrelation, shape (P,)."""
    amplitudes = rouse_modes(positions, modes)
    times = []
    for p in range(amplitudes.shape[1]):
        # <X_p(t) . X_p(0)>: the mean over the three Cartesian components of their covariances
        x = amplitudes[:, p] - amplitudes[:, p].mean(axis=0)
        acf = autocorrelation(x)  # (lags, 3), each normalised by its own variance
        weights = x.var(axis=0)
        times.append(integrated_time((acf * weights).sum(axis=1) / weights.sum(), dt))
    return np.array(times)


def com_diffusion(positions, masses, dt: float, lag_range_ps: tuple[float, float] = (20.0, 200.0)) -> float:
    """Centre-of-mass self-diffusion coefficient (nm^2/ps) from the slope of the MSD, ``MSD = 6 D t``.

    The slope is a least-squares line through the origin over the lags in
    ``lag_range_ps`` (at least one frame, and at most a tenth of the
    trajectory): beyond the velocity relaxation, so diffusive for the fine
    model and for a model step alike, and short enough to average many windows.
    """
    xyz = np.asarray(positions, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    com = np.einsum("b,fbx->fx", m / m.sum(), xyz)
    n = len(com)
    first = max(1, int(round(lag_range_ps[0] / dt)))
    last = min(max(first + 1, int(round(lag_range_ps[1] / dt))), n // 10)
    if last < first:
        raise ValueError(f"com_diffusion needs at least {10 * first} frames, got {n}")
    lags = np.arange(first, last + 1)
    msd = np.array([((com[lag:] - com[:-lag]) ** 2).sum(axis=1).mean() for lag in lags])
    t = lags * float(dt)
    return float((t @ msd) / (t @ t) / 6.0)
