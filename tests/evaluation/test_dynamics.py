"""Dynamical observables on synthetic trajectories with known answers."""
import numpy as np
import pytest
from scipy.signal import lfilter

from openmm_cgml.evaluation.dynamics import com_diffusion, rouse_modes, rouse_times


def ou(n, tau, rng, shape=(3,)):
    """Discrete Ornstein-Uhlenbeck (AR(1)) series with ACF exp(-lag / tau), unit variance, along axis 0."""
    phi = np.exp(-1.0 / tau)
    kicks = rng.normal(size=(n, *shape))
    kicks[0] /= np.sqrt(1 - phi ** 2)  # start in equilibrium
    return lfilter([np.sqrt(1 - phi ** 2)], [1.0, -phi], kicks, axis=0)


def test_com_diffusion_of_a_random_walk():
    rng = np.random.default_rng(0)
    sigma, dt = 0.05, 2.0  # nm per frame per component, ps per frame
    walk = np.cumsum(rng.normal(0, sigma, size=(200_000, 1, 3)), axis=0)
    chain = np.concatenate([walk, walk + 0.3], axis=1)  # two beads moving rigidly together
    assert com_diffusion(chain, [1.0, 3.0], dt) == pytest.approx(sigma ** 2 / (2 * dt), rel=0.05)


def test_rouse_times_recover_planted_mode_relaxation():
    rng = np.random.default_rng(1)
    n_beads, taus = 10, (40.0, 12.0, 5.0)
    amplitudes = np.stack([ou(200_000, tau, rng) for tau in taus], axis=1)  # (F, P, 3)
    index = np.arange(1, n_beads + 1) - 0.5
    basis = np.cos(np.outer([1, 2, 3], index) * np.pi / n_beads)  # (P, N)
    positions = 2 * np.einsum("pn,fpx->fnx", basis, amplitudes) + 5.0
    assert np.allclose(rouse_modes(positions), amplitudes, atol=1e-9)
    assert rouse_times(positions, dt=0.5) == pytest.approx(0.5 * np.array(taus), rel=0.1)
